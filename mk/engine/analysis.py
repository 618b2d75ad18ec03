"""Analysis: resolves each target's label attributes and runs its rule to declare actions.

Each target is analysed for a target platform (see `platforms`), but configured for it only when
its rule reads the platform or one of its dependencies was: any other target is the one the
host's platform has, so its actions are shared between platforms. A `for_exec` attribute's
targets are always configured for the host, which runs the actions.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from mk.engine.actions import Action, Artifact
from mk.engine.attrs import label_texts
from mk.engine.errors import MkError
from mk.engine.labels import Label, LabelError
from mk.engine.loader import Loader
from mk.engine.platforms import Platform, host_platform, output_prefix
from mk.engine.rule_api import Attr, Dep, Providers, RuleContext
from mk.engine.targets import ConfiguredTarget, Target


class Analyzer:
    def __init__(self, loader: Loader, source_date_epoch: int,
                 output_groups: Mapping[Label, tuple[str, ...]] | None = None) -> None:
        self.loader = loader
        self.source_date_epoch = source_date_epoch
        self.output_groups = output_groups or {}  # what the build asks of each requested target
        self.done: dict[tuple[Label, Platform], ConfiguredTarget] = {}
        self._stack: list[Label] = []

    def analyze(self, label: Label, platform: Platform | None = None) -> ConfiguredTarget:
        """`label` analysed for the target `platform` (the host's by default)."""
        wanted = platform or host_platform()
        if (label, wanted) in self.done:
            return self.done[label, wanted]
        if label in self._stack:
            raise self._cycle(label)
        target = self.loader.target(label)
        if target is None:
            raise MkError(self.loader.missing_target_message(label))
        self._stack.append(label)
        try:
            deps = {attr.name: self._split_deps(target, attr) if attr.per_platform else
                    self._deps(target, attr, host_platform() if attr.for_exec else wanted)
                    for attr in target.rule.attrs if attr.type.holds_labels}
            # What an exec or a per-platform attribute names does not follow the target platform.
            fixed = {attr.name for attr in target.rule.attrs if attr.for_exec or attr.per_platform}
            configured_deps = any(d.platform is not None for name, ds in deps.items() if name not in fixed
                                  for d in ds)
            configured_for = wanted if target.rule.uses_platform or configured_deps else None
            if configured_for is None and wanted != host_platform():
                # Nothing of it depends on the platform: it is the host's target, shared.
                self._stack.pop()
                shared = self.analyze(label)
                self._stack.append(label)
                self.done[label, wanted] = shared
                return shared
            read: list[str] = []

            def read_source(path: str) -> str | None:
                read.append(path)  # its content shapes the target, as an action's input does
                return self.loader.read_source(path)

            ctx = RuleContext(label, target.attrs, deps, self.source_date_epoch, read_source,
                              self.output_groups.get(label, ()), configured_for)
            try:
                providers = Providers.of(target.rule.name, target.rule.analyze(ctx))
            except MkError as e:
                raise MkError(e.message, e.location or target.location) from None
            except ValueError as e:  # a value the rule cannot use, reported as the attribute checks do
                raise MkError(f"{target.rule.name} {label}: {e}", target.location) from None
        finally:
            self._stack.pop()
        for action in ctx.actions:
            _check_outputs(target, action, configured_for)
        made_for = str(configured_for) if configured_for is not None else None
        actions = tuple(dataclasses.replace(action, where=target.location, platform=made_for) for action in ctx.actions)
        dep_labels = tuple(sorted({d.label for ds in deps.values() for d in ds if d.label}))
        configured = ConfiguredTarget(target, providers, actions, dep_labels, tuple(sorted(set(read))),
                                      configured_for)
        self.done[label, wanted] = configured
        return configured

    def closure(self) -> list[ConfiguredTarget]:
        """Every target analysed, each configured target once, ordered by label then platform."""
        unique = {id(c): c for c in self.done.values()}
        return sorted(unique.values(), key=lambda c: (c.target.label, str(c.platform or "")))

    def _split_deps(self, target: Target, attr: Attr) -> list[Dep]:
        """`attr`'s targets, analysed for each platform its `per_platform` attribute lists."""
        assert attr.per_platform is not None
        texts = target.attrs[attr.per_platform]
        assert isinstance(texts, list)
        platforms = []
        for text in texts:
            try:
                platforms.append(Platform.parse(str(text)))
            except MkError as e:
                raise MkError(f"{target.rule.name} {target.label}: attribute '{attr.per_platform}': {e.message}",
                              self.loader.find_string(target.location, str(text))) from None
        return [dep for platform in platforms for dep in self._deps(target, attr, platform)]

    def _deps(self, target: Target, attr: Attr, platform: Platform) -> list[Dep]:
        try:
            return [self._checked(target, attr, self._resolve(target, text, platform))
                    for text in label_texts(target.attrs[attr.name], attr.type.words)]
        except MkError as e:
            if attr.name in target.from_settings:  # not in the BUILD file: say where it came from
                raise MkError(f"{e.message} (the '{attr.setting}' setting in mk.toml gives '{attr.name}')",
                              e.location) from None
            raise

    def _resolve(self, target: Target, text: str, platform: Platform) -> Dep:
        """A label attribute entry is a target, an output file of a target, or a source file."""
        package = target.label.package
        where = self.loader.find_string(target.location, text)
        try:
            label = Label.parse(text, package)
        except LabelError as e:
            raise MkError(f"{target.rule.name} {target.label}: {e}", where) from None
        try:
            pkg = self.loader.package(label.package)
        except MkError as e:
            raise MkError(f"{target.rule.name} {target.label} depends on '{text}': {e.message}", where) from None
        path = f"{label.package}/{label.name}".lstrip("/")
        # layer(name = "motd", files = {"/etc/motd": "motd"}): a bare name that is the target itself
        # means the source file of that name, not a dependency cycle.
        names_itself = label == target.label and not text.startswith((":", "//"))
        if names_itself and self.loader.observed.is_file(self.loader.root / path):
            return Dep(text, None, (Artifact(path, is_source=True),))
        if label.name in pkg.targets:
            try:
                configured = self.analyze(label, platform)
                providers = configured.providers
                return Dep(text, label, providers.default.files, providers, configured.platform)
            except MkError as e:
                if e.location is None:
                    raise MkError(e.message, where) from None
                raise
        if label.name in pkg.outputs:
            owner = Label(label.package, pkg.outputs[label.name])
            made_for = self.analyze(owner, platform).platform
            prefix = output_prefix(made_for) if made_for is not None else ""
            return Dep(text, owner, (Artifact(prefix + path, is_source=False),), platform=made_for)
        if self.loader.has_package(os.path.dirname(path)) and os.path.dirname(path) != label.package:
            raise MkError(
                f"{target.rule.name} {target.label}: '{text}' crosses into package "
                f"'//{os.path.dirname(path)}'; refer to a target there instead",
                where,
            )
        if self.loader.observed.is_file(self.loader.root / path):
            return Dep(text, None, (Artifact(path, is_source=True),))
        if text.startswith((":", "//")):
            hint = self.loader.nearest_targets(label)
            message = f"{target.rule.name} {target.label} depends on '{text}', which does not exist{hint}"
        elif os.path.isdir(self.loader.root / path):
            message = (f"{target.rule.name} {target.label}: '{path}' is a directory, not a file; name the files "
                       "in it (glob() lists them)")
        else:
            message = f"{target.rule.name} {target.label}: source file '{path}' does not exist"
        raise MkError(message, where)

    def _checked(self, target: Target, attr: Attr, dep: Dep) -> Dep:
        """`dep`, if it gives every provider `attr` requires; else an error naming both targets."""
        missing = [p.__name__ for p in attr.providers if dep.providers is None or dep.providers.get(p) is None]
        if not missing:
            return dep
        needs = " and ".join(missing)
        if dep.providers is None:
            what = f"'{dep.text}' is a file" if dep.label is None else f"'{dep.text}' is one output file of {dep.label}"
            gives = f"{what}, which provides nothing"
        else:
            names = ", ".join(dep.providers.names()) or "only files"
            gives = f"{dep.label} ({dep.providers.rule}) provides {names}"
        raise MkError(f"{target.rule.name} {target.label}: attribute '{attr.name}' needs a target that provides "
                      f"{needs}; {gives}", self.loader.find_string(target.location, dep.text))

    def _cycle(self, label: Label) -> MkError:
        cycle = [*self._stack[self._stack.index(label):], label]
        locations = {lbl: self.loader.package(lbl.package).targets[lbl.name].location for lbl in cycle}
        lines = [f"    {lbl}  ({locations[lbl]})" for lbl in cycle]
        return MkError("dependency cycle:\n" + "\n".join(lines), locations[label])


def _check_outputs(target: Target, action: Action, platform: Platform | None) -> None:
    """Whatever a rule asks for, an action writes only inside its own package's output folder."""
    package = f"{target.label.package}/" if target.label.package else ""
    # A shared output (see RuleContext.output) is where the host's platform has it.
    prefixes = {package, (output_prefix(platform) if platform is not None else "") + package}
    for output in action.outputs:
        path = output.path
        parts = path.split("/")
        if output.is_source or not path.startswith(tuple(prefixes)) or any(p in ("", ".", "..") for p in parts) \
                or "\0" in path:
            raise MkError(f"{target.rule.name} {target.label}: action {action.mnemonic} declares the output "
                          f"'{path}', which is outside the package's output folder", target.location)
