"""The registry: what rule families plug into the engine, which knows none of them by name.

A family (files and layers, Debian packages, kernels, images, ...) hands over its rules, the
`mk.toml` settings it reads, the download sources it can resolve, its subcommands (`mk lock`)
and its runners (`mk run`). The command line assembles the registry and passes it in, as Pants
backends are assembled; the engine checks it once, at start-up.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mk.cache.parts import CACHE_PARTS, CachePart
from mk.engine.cache_parts import ENGINE_CACHE_PARTS
from mk.engine.workspace import ENGINE_SETTINGS, Setting, Settings

if TYPE_CHECKING:
    import click

    from mk.engine.rule_api import Provider, Rule


class Running(Protocol):
    """Something a runner started (a virtual machine, say)."""

    def wait(self) -> int: ...

    def stop(self) -> None: ...

    def reload(self, provider: Provider) -> str | None:
        """Restarts onto what a rebuild of the same target provides, without stopping (a soft
        reboot): None when done, else why it cannot (then it is stopped and started again)."""


@dataclass(frozen=True)
class Runner:
    """Starts what a built target provides, for `mk run` and `mk watch --run`.

    `options` are the command-line options it takes (added to both commands); `check` runs before
    the build (to fail early when, say, QEMU is missing); `start` gets the provider, the folder
    where outputs are placed, the cache folder (for state such as an acceleration probe), the
    options' values, and whether it runs in the foreground (`mk run`) or in the background.
    """

    provider: type[Provider]
    options: tuple[click.Option, ...]
    check: Callable[[], None]
    start: Callable[[Provider, Path, Path, Mapping[str, object], bool], Running]


SourceResolver = Callable[[Settings], Callable[[str], tuple[str, ...]]]


def load(reference: str) -> Any:
    """Imports `module:attribute`. Families name their parts this way so that a command which
    needs no rule (a no-op build, `mk cache stats`) imports none of them."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Family:
    """One rule family's contributions. Settings and cache parts (the folders it writes under the
    cache, for `mk cache stats|gc`) are data; everything else is a `module:name` reference:
    `rules` name `Rule`s, `sources` resolvers of download sources by name (given the settings, a
    function from a name within the source to its base URLs, in the order to try them, looked up
    when an action runs so a URL never enters a key), `commands` click commands by command name, `runners` `Runner`s."""

    name: str
    rules: tuple[str, ...] = ()
    settings: tuple[Setting, ...] = ()
    cache_parts: tuple[CachePart, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    commands: Mapping[str, str] = field(default_factory=dict)
    runners: tuple[str, ...] = ()


class RegistryError(Exception):
    pass


@dataclass(frozen=True)
class Registry:
    families: tuple[Family, ...]

    def __post_init__(self) -> None:
        for what, names in (("setting", [s.key or s.env or "" for s in self.all_settings()]),
                            ("cache folder", [p.name for p in self.cache_parts()]),
                            ("command", [c for f in self.families for c in f.commands]),
                            ("download source", [n for f in self.families for n in f.sources])):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise RegistryError(f"two rule families register the {what} {', '.join(duplicates)}")

    def __getstate__(self) -> dict[str, object]:
        # Sent to the process that evaluates BUILD files: the rules are imported there again.
        return {"families": self.families}

    @functools.cached_property
    def rules(self) -> dict[str, Rule]:
        rules: dict[str, Rule] = {}
        for family in self.families:
            for reference in family.rules:
                rule: Rule = load(reference)
                if rule.name in rules:
                    raise RegistryError(f"two rule families register the rule {rule.name}")
                rules[rule.name] = rule
        return rules

    def all_settings(self) -> tuple[Setting, ...]:
        """The engine's settings, then each family's: what mk.toml may hold, and the docs' table."""
        return ENGINE_SETTINGS + tuple(s for f in self.families for s in f.settings)

    def cache_parts(self) -> tuple[CachePart, ...]:
        """Everything mk writes under the cache root: the cache's own parts, the engine's, each family's."""
        return CACHE_PARTS + ENGINE_CACHE_PARTS + tuple(p for f in self.families for p in f.cache_parts)

    def commands(self) -> dict[str, str]:
        return {name: ref for f in self.families for name, ref in f.commands.items()}

    def source_urls(self, settings: Settings) -> Callable[[str], tuple[str, ...]]:
        """A resolver of `source:name` names ("debian:debian-security", say), built on first use."""

        @functools.cache
        def lookup(name: str) -> tuple[str, ...]:
            source, _, archive = name.partition(":")
            for family in self.families:
                if source in family.sources:
                    resolver: SourceResolver = load(family.sources[source])
                    return resolver(settings)(archive)
            raise RegistryError(f"no rule family resolves the download source '{source}'")

        return lookup

    def runners(self) -> list[Runner]:
        return [load(reference) for family in self.families for reference in family.runners]

    def runner_for(self, providers: Mapping[type[Provider], Provider]) -> tuple[Runner, Provider] | None:
        for runner in self.runners():
            if runner.provider in providers:
                return runner, providers[runner.provider]
        return None
