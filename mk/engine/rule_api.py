"""The rules API: a rule is an attribute schema plus an analysis function that declares actions
and returns typed providers.

The schema is the single source for attribute validation and conversion (a rule receives typed
values, never strings to parse), the rule reference in BUILD.md, and the staleness test of that
file. Rules talk to each other only through providers: an attribute names the providers it needs,
and analysis refuses a dependency that lacks them, naming both targets.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from mk.engine.actions import Action, Artifact
from mk.engine.attrs import STRING, AttrType
from mk.engine.labels import Label
from mk.engine.platforms import Platform, host_platform, output_prefix

P = TypeVar("P", bound="Provider")


class Provider:
    """Base of the frozen dataclasses a rule returns to describe what it gives its dependents."""


@dataclass(frozen=True)
class DefaultInfo(Provider):
    """The files a target stands for, and extra outputs built only when asked for by name
    (Bazel's output groups, such as the `tar` format of an image). Every target returns one."""

    files: tuple[Artifact, ...]
    groups: Mapping[str, tuple[Artifact, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Providers:
    """What analysis of one target gave, by provider class."""

    rule: str
    by_type: Mapping[type[Provider], Provider]

    @staticmethod
    def of(rule: str, providers: Sequence[Provider]) -> Providers:
        by_type = {type(p): p for p in providers}
        if DefaultInfo not in by_type or len(by_type) != len(providers):
            raise ValueError(f"rule {rule} must return one DefaultInfo and at most one of each provider")
        return Providers(rule, by_type)

    @property
    def default(self) -> DefaultInfo:
        found = self.get(DefaultInfo)
        assert found is not None  # `of` checked that there is one
        return found

    def get(self, kind: type[P]) -> P | None:
        found = self.by_type.get(kind)
        return found if isinstance(found, kind) else None

    def names(self) -> list[str]:
        return sorted(t.__name__ for t in self.by_type if t is not DefaultInfo)


@dataclass(frozen=True)
class Attr:
    name: str
    type: AttrType
    doc: str
    default: object = None
    mandatory: bool = False
    # Label attributes: what each target named must provide. (`builtins.type`: `type` is a field here.)
    providers: tuple[builtins.type[Provider], ...] = ()
    setting: str | None = None  # unset in a BUILD file, it takes this workspace setting's value, if set
    # The targets it names are configured for the exec platform (the host's), whatever the target
    # platform: a toolchain runs the actions, so it is never built for the image's architecture.
    for_exec: bool = False
    # The name of a string-list attribute of platforms ("linux/arm64"): the targets this attribute
    # names are analysed once for each of them, in that order (Bazel's split transition); each
    # `Dep.platform` says for which. A multi-platform OCI index names its image this way.
    per_platform: str | None = None


NAME_ATTR = Attr("name", STRING, "The target's name, unique within its package.", mandatory=True)


@dataclass(frozen=True)
class Dep:
    """One resolved entry of a label attribute: the files it stands for, who makes them, and
    (for a target) its providers."""

    text: str  # as written in the BUILD file
    label: Label | None  # the target, or None for a source file
    files: tuple[Artifact, ...]
    providers: Providers | None = None  # None for a source file or one output file of a target
    platform: Platform | None = None  # the target platform the target was configured for, if it was

    def get(self, kind: type[P]) -> P:
        """The provider an attribute required (analysis has checked that it is there)."""
        found = self.find(kind)
        assert found is not None, f"{self.text} lacks {kind.__name__}; declare it in the attribute's providers"
        return found

    def find(self, kind: type[P]) -> P | None:
        """A provider the target may or may not give."""
        return self.providers.get(kind) if self.providers else None


class RuleContext:
    """Handed to a rule's analysis function; collects the actions it declares."""

    def __init__(
        self,
        label: Label,
        attrs: Mapping[str, object],
        deps: Mapping[str, Sequence[Dep]],
        source_date_epoch: int,
        read_source: Callable[[str], str | None],
        output_groups: tuple[str, ...] = (),
        platform: Platform | None = None,
    ) -> None:
        self.label = label
        self.attrs = attrs
        self.deps = deps
        self.source_date_epoch = source_date_epoch
        self._read_source = read_source
        # The output groups the build asks of this very target (`mk image --format tar`: "tar"),
        # so that a file describing its outputs (an image's manifest) can list them; none when
        # it is built only as another target's dependency.
        self.output_groups = output_groups
        self.actions: list[Action] = []
        self._platform = platform

    @property
    def platform(self) -> Platform:
        """The target platform, for a rule declared with `uses_platform` (its outputs then sit apart)."""
        assert self._platform is not None, f"{self.label}: a rule reading the platform sets uses_platform"
        return self._platform

    def string(self, name: str) -> str:
        value = self.attrs[name]
        assert isinstance(value, str)
        return value

    def strings(self, name: str) -> list[str]:
        value = self.attrs[name]
        assert isinstance(value, list)
        return value

    def files(self, name: str) -> tuple[Artifact, ...]:
        """All files named by a label attribute, in attribute order, without duplicates."""
        seen: dict[Artifact, None] = {}
        for dep in self.deps.get(name, ()):
            for f in dep.files:
                seen[f] = None
        return tuple(seen)

    def providers(self, name: str, kind: type[P]) -> list[P]:
        """The `kind` provider of each target named by a label attribute that requires it."""
        return [dep.get(kind) for dep in self.deps.get(name, ())]

    def read_source(self, name: str) -> str | None:
        """The text of a file of this package (None if missing), for rules whose analysis depends
        on a checked-in file such as a lockfile. Its content then invalidates the analysis cache."""
        path = f"{self.label.package}/{name}" if self.label.package else name
        return self._read_source(path)

    def output(self, name: str, tree: bool = False, shared: bool = False) -> Artifact:
        """The artifact for an output file of this target's package (`tree`: a tree manifest).

        `shared`: what the action writes there is the same whatever the target platform (a Debian
        package of `Architecture: all`), so the path is too: each platform declares the very same
        action, which the graph keeps once and the cache holds once."""
        prefix = f"{self.label.package}/" if self.label.package else ""
        configured = "" if shared else output_prefix(self._platform or host_platform())
        return Artifact(configured + prefix + name, is_source=False, is_tree=tree)

    def add_action(self, action: Action) -> None:
        self.actions.append(action)


@dataclass(frozen=True)
class Rule:
    name: str
    doc: str
    attrs: tuple[Attr, ...]
    analyze: Callable[[RuleContext], Sequence[Provider]] = field(compare=False)
    # Its analysis reads `RuleContext.platform`: its targets are configured for each target platform.
    uses_platform: bool = False

    def all_attrs(self) -> tuple[Attr, ...]:
        return (NAME_ATTR, *self.attrs)
