"""Targets as loaded from BUILD files, and as analysed into actions.

Kept apart from the loader and analyser so that a build whose graph comes from the analysis
cache does not import Starlark at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from mk.engine.actions import Action
from mk.engine.errors import Location
from mk.engine.labels import Label
from mk.engine.platforms import Platform
from mk.engine.rule_api import Providers, Rule


@dataclass(frozen=True)
class Target:
    label: Label
    rule: Rule
    attrs: dict[str, object]
    location: Location
    from_settings: frozenset[str] = frozenset()  # attributes unset in the BUILD file, taken from mk.toml


@dataclass(frozen=True)
class ConfiguredTarget:
    target: Target
    providers: Providers
    actions: tuple[Action, ...]
    deps: tuple[Label, ...]
    read: tuple[str, ...] = ()  # workspace files its analysis read (a lockfile), by path
    # The target platform it was configured for; None when nothing of it depends on one (see analysis).
    platform: Platform | None = None

    def source_files(self) -> list[str]:
        """The workspace files this target uses itself (not through another target): its actions'
        source inputs, the source files it stands for, and those its analysis read. Editing one
        changes the target."""
        used = [i for a in self.actions for i in a.inputs] + list(self.providers.default.files)
        return sorted({a.path for a in used if a.is_source} | set(self.read))
