"""The rules API: a rule is an attribute schema plus an analysis function that declares actions.

The schema is the single source for attribute validation, the rule reference in BUILD.md, and
the staleness test of that file.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mk.engine.actions import Action, Artifact
from mk.engine.labels import Label


class AttrType(enum.Enum):
    STRING = "string"
    STRING_LIST = "list of strings"
    STRING_DICT = "dict of string to string"
    BOOL = "bool"
    INT = "int"
    LABEL = "label"
    LABEL_LIST = "list of labels"
    OUTPUT = "output file name"
    OUTPUT_LIST = "list of output file names"
    STRING_KEYED_LABEL_DICT = "dict of string to label"

    def accepts(self, value: object) -> bool:
        if self in (AttrType.STRING, AttrType.LABEL, AttrType.OUTPUT):
            return isinstance(value, str)
        if self in (AttrType.STRING_LIST, AttrType.LABEL_LIST, AttrType.OUTPUT_LIST):
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        if self in (AttrType.STRING_DICT, AttrType.STRING_KEYED_LABEL_DICT):
            return isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            )
        if self is AttrType.BOOL:
            return isinstance(value, bool)
        return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Attr:
    name: str
    type: AttrType
    doc: str
    default: object = None
    mandatory: bool = False


NAME_ATTR = Attr("name", AttrType.STRING, "The target's name, unique within its package.", mandatory=True)


@dataclass(frozen=True)
class Dep:
    """One resolved entry of a label attribute: the files it stands for and who makes them."""

    text: str  # as written in the BUILD file
    label: Label | None  # the target, or None for a source file
    files: tuple[Artifact, ...]


@dataclass(frozen=True)
class TargetInfo:
    """What analysis of a target gives to its dependents and to `mk build`.

    `groups` are extra outputs built only when asked for by name (Bazel's output groups), such
    as the `tar` and `oci` formats of an image.
    """

    files: tuple[Artifact, ...]
    groups: Mapping[str, tuple[Artifact, ...]] = field(default_factory=dict)


class RuleContext:
    """Handed to a rule's analysis function; collects the actions it declares."""

    def __init__(
        self,
        label: Label,
        attrs: Mapping[str, object],
        deps: Mapping[str, Sequence[Dep]],
        source_date_epoch: int,
        read_source: Callable[[str], str | None],
    ) -> None:
        self.label = label
        self.attrs = attrs
        self.deps = deps
        self.source_date_epoch = source_date_epoch
        self._read_source = read_source
        self.actions: list[Action] = []

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

    def read_source(self, name: str) -> str | None:
        """The text of a file of this package (None if missing), for rules whose analysis depends
        on a checked-in file such as a lockfile. Its content then invalidates the analysis cache."""
        path = f"{self.label.package}/{name}" if self.label.package else name
        return self._read_source(path)

    def output(self, name: str) -> Artifact:
        """The artifact for an output file of this target's package."""
        prefix = f"{self.label.package}/" if self.label.package else ""
        return Artifact(prefix + name, is_source=False)

    def add_action(self, action: Action) -> None:
        self.actions.append(action)


@dataclass(frozen=True)
class Rule:
    name: str
    doc: str
    attrs: tuple[Attr, ...]
    analyze: Callable[[RuleContext], TargetInfo] = field(compare=False)

    def attr(self, name: str) -> Attr | None:
        return next((a for a in self.all_attrs() if a.name == name), None)

    def all_attrs(self) -> tuple[Attr, ...]:
        return (NAME_ATTR, *self.attrs)

    def __reduce__(self) -> tuple[Callable[[str], Rule], tuple[str]]:
        # Pickled (in the analysis cache) by name: the registry holds the code.
        return (builtin_rule, (self.name,))


def builtin_rule(name: str) -> Rule:
    from mk.rules import RULES

    return RULES[name]
