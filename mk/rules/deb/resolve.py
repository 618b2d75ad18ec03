"""Resolves requested packages to a closure: Depends and Pre-Depends, alternatives, versioned
constraints (Debian's own version comparison), virtual packages through Provides, `:any`
qualifiers, and excludes. The newest version wins across suites, so security updates do,
unless a version is preferred (the one already locked, say) and still satisfies what asks for it."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from debian.deb822 import PkgRelation
from debian.debian_support import version_compare

from mk.engine.errors import MkError, did_you_mean
from mk.rules.deb.index import Candidate

_OPS = {
    "<<": lambda c: c < 0, "<=": lambda c: c <= 0, "=": lambda c: c == 0,
    ">=": lambda c: c >= 0, ">>": lambda c: c > 0,
}


@dataclass(frozen=True)
class _Alternative:
    name: str
    constraint: tuple[str, str] | None

    def __str__(self) -> str:
        return f"{self.name} ({self.constraint[0]} {self.constraint[1]})" if self.constraint else self.name

    def accepts(self, version: str | None) -> bool:
        if self.constraint is None:
            return True
        if version is None:
            return False
        op, wanted = self.constraint
        return bool(_OPS[op](version_compare(version, wanted)))


class VersionConflict(MkError):
    """Two packages need different versions of `name`."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


def resolve(candidates: list[Candidate], arch: str, excludes: Iterable[str], requested: Iterable[str],
            prefer: Mapping[str, str]) -> list[Candidate]:
    """The closure of `requested`, taking the `prefer`red versions where they fit. A preferred
    version that something else rules out (a security update that needs a newer library, say) is
    given up, and the newest taken instead."""
    preferred = dict(prefer)
    while True:
        try:
            return Resolver(candidates, arch, excludes, preferred).resolve(requested)
        except VersionConflict as e:
            if e.name not in preferred:
                raise
            del preferred[e.name]


class Resolver:
    def __init__(self, candidates: Iterable[Candidate], arch: str, excludes: Iterable[str],
                 prefer: Mapping[str, str] | None = None) -> None:
        """`prefer`: package name -> the version to take whenever the indices have it and it is
        acceptable, rather than the newest."""
        self.arch = arch
        self.excludes = set(excludes)
        self.prefer = dict(prefer or {})
        self.by_name: dict[str, list[Candidate]] = {}
        self.providers: dict[str, list[tuple[Candidate, str | None]]] = {}
        for c in candidates:
            if c.architecture not in (arch, "all"):
                continue
            self.by_name.setdefault(c.name, []).append(c)
            for group in _relations(c.provides):
                for alt in group:
                    provided = alt.constraint[1] if alt.constraint else None
                    self.providers.setdefault(alt.name, []).append((c, provided))
        for versions in self.by_name.values():
            versions.sort(key=functools.cmp_to_key(_newer_first))
        self.selected: dict[str, Candidate] = {}

    def resolve(self, requested: Iterable[str]) -> list[Candidate]:
        queue: list[tuple[Candidate, str]] = []
        for spec in requested:
            name, _, version = spec.partition("=")
            if name in self.excludes:
                raise MkError(f"package '{name}' is both requested and excluded")
            wanted = _Alternative(name, ("=", version) if version else None)
            chosen = self._best(wanted)
            if chosen is None:
                if name in self.by_name:
                    raise MkError(f"version {version} of '{name}' is not in the indices; "
                                  f"available: {self._versions(name)}")
                raise MkError(f"package '{name}' is not in the indices for architecture {self.arch}"
                              f"{did_you_mean(name, self.by_name)}")
            queue += self._select(chosen, "requested")
        while queue:
            package, _why = queue.pop()
            for field, text in (("Pre-Depends", package.pre_depends), ("Depends", package.depends)):
                for group in _relations(text):
                    queue += self._satisfy(group, package, field)
        return sorted(self.selected.values(), key=lambda c: c.name)

    def _satisfy(self, group: list[_Alternative], needed_by: Candidate, field: str) -> list[tuple[Candidate, str]]:
        for alt in group:
            if alt.name in self.excludes or self._already(alt):
                return []
        for alt in group:
            real = self._best(alt)
            if real is not None:
                return self._select(real, needed_by.name)
            providers = sorted(
                (c for c, provided in self.providers.get(alt.name, []) if alt.accepts(provided)),
                key=lambda c: (c.name, c.version),
            )
            if providers:
                return self._select(providers[0], needed_by.name)
        relation = " | ".join(str(a) for a in group)
        raise MkError(
            f"cannot install {needed_by.name} {needed_by.version}: it {field.lower()} on '{relation}', "
            f"which no package in the suites provides for architecture {self.arch} (add it to 'excludes' if the "
            "image does not need it)"
        )

    def _already(self, alt: _Alternative) -> bool:
        chosen = self.selected.get(alt.name)
        if chosen is not None and alt.accepts(chosen.version):
            return True
        return any(
            c.name in self.selected and self.selected[c.name] == c and (alt.constraint is None or alt.accepts(provided))
            for c, provided in self.providers.get(alt.name, [])
        )

    def _best(self, alt: _Alternative) -> Candidate | None:
        acceptable = [c for c in self.by_name.get(alt.name, []) if alt.accepts(c.version)]
        preferred = self.prefer.get(alt.name)
        return next((c for c in acceptable if c.version == preferred), acceptable[0] if acceptable else None)

    def _versions(self, name: str) -> str:
        """'2.0 (bookworm-security), 1.0 (bookworm, bookworm-updates)': newest first, with their suites."""
        suites: dict[str, list[str]] = {}
        for c in self.by_name[name]:
            suites.setdefault(c.version, []).append(c.suite)
        return ", ".join(f"{version} ({', '.join(names)})" for version, names in suites.items())

    def _select(self, candidate: Candidate, why: str) -> list[tuple[Candidate, str]]:
        existing = self.selected.get(candidate.name)
        if existing is not None:
            if existing.version != candidate.version:
                raise VersionConflict(
                    f"{why} needs {candidate.name} {candidate.version}, but {existing.name} {existing.version} "
                    "was already chosen; pin one version in 'packages'", candidate.name,
                )
            return []
        self.selected[candidate.name] = candidate
        return [(candidate, why)]


def _newer_first(a: Candidate, b: Candidate) -> int:
    return version_compare(b.version, a.version)


def _relations(text: str) -> list[list[_Alternative]]:
    if not text.strip():
        return []
    return [
        [_Alternative(alt["name"], tuple(alt["version"]) if alt.get("version") else None)  # type: ignore[arg-type]
         for alt in group]
        for group in PkgRelation.parse_relations(text)
    ]
