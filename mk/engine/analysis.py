"""Analysis: resolves each target's label attributes and runs its rule to declare actions."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from mk.engine.actions import Action, Artifact
from mk.engine.attrs import label_texts
from mk.engine.errors import MkError
from mk.engine.labels import Label, LabelError
from mk.engine.loader import Loader
from mk.engine.rule_api import Attr, Dep, Providers, RuleContext
from mk.engine.targets import ConfiguredTarget, Target


class Analyzer:
    def __init__(self, loader: Loader, source_date_epoch: int,
                 output_groups: Mapping[Label, tuple[str, ...]] | None = None) -> None:
        self.loader = loader
        self.source_date_epoch = source_date_epoch
        self.output_groups = output_groups or {}  # what the build asks of each requested target
        self.done: dict[Label, ConfiguredTarget] = {}
        self._stack: list[Label] = []

    def analyze(self, label: Label) -> ConfiguredTarget:
        if label in self.done:
            return self.done[label]
        if label in self._stack:
            raise self._cycle(label)
        target = self.loader.target(label)
        if target is None:
            raise MkError(self.loader.missing_target_message(label))
        self._stack.append(label)
        try:
            deps = {attr.name: self._deps(target, attr) for attr in target.rule.attrs if attr.type.holds_labels}
            read: list[str] = []

            def read_source(path: str) -> str | None:
                read.append(path)  # its content shapes the target, as an action's input does
                return self.loader.read_source(path)

            ctx = RuleContext(label, target.attrs, deps, self.source_date_epoch, read_source,
                              self.output_groups.get(label, ()))
            try:
                providers = Providers.of(target.rule.name, target.rule.analyze(ctx))
            except MkError as e:
                raise MkError(e.message, e.location or target.location) from None
            except ValueError as e:  # a value the rule cannot use, reported as the attribute checks do
                raise MkError(f"{target.rule.name} {label}: {e}", target.location) from None
        finally:
            self._stack.pop()
        for action in ctx.actions:
            _check_outputs(target, action)
        actions = tuple(dataclasses.replace(action, where=target.location) for action in ctx.actions)
        dep_labels = tuple(sorted({d.label for ds in deps.values() for d in ds if d.label}))
        configured = ConfiguredTarget(target, providers, actions, dep_labels, tuple(sorted(set(read))))
        self.done[label] = configured
        return configured

    def closure(self) -> list[ConfiguredTarget]:
        return [self.done[label] for label in sorted(self.done)]

    def _deps(self, target: Target, attr: Attr) -> list[Dep]:
        try:
            return [self._checked(target, attr, self._resolve(target, text))
                    for text in label_texts(target.attrs[attr.name], attr.type.words)]
        except MkError as e:
            if attr.name in target.from_settings:  # not in the BUILD file: say where it came from
                raise MkError(f"{e.message} (the '{attr.setting}' setting in mk.toml gives '{attr.name}')",
                              e.location) from None
            raise

    def _resolve(self, target: Target, text: str) -> Dep:
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
                providers = self.analyze(label).providers
                return Dep(text, label, providers.default.files, providers)
            except MkError as e:
                if e.location is None:
                    raise MkError(e.message, where) from None
                raise
        if label.name in pkg.outputs:
            owner = Label(label.package, pkg.outputs[label.name])
            self.analyze(owner)
            return Dep(text, owner, (Artifact(path, is_source=False),))
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


def _check_outputs(target: Target, action: Action) -> None:
    """Whatever a rule asks for, an action writes only inside its own package's output folder."""
    prefix = f"{target.label.package}/" if target.label.package else ""
    for output in action.outputs:
        path = output.path
        parts = path.split("/")
        if output.is_source or not path.startswith(prefix) or any(p in ("", ".", "..") for p in parts) \
                or "\0" in path:
            raise MkError(f"{target.rule.name} {target.label}: action {action.mnemonic} declares the output "
                          f"'{path}', which is outside the package's output folder", target.location)
