"""`mk lock TARGET`: resolve a deb_packages manifest (or a deb_source package) against the
archives' signed indices and write its lockfile.

A deb_source target is resolved like a deb_packages one, its single package by the same modes.
There are three ways to resolve, and one to only look:

- `keep` (plain `mk lock`): every locked version the archive still has stays, so editing the
  package list moves only what the edit needs;
- `update` (`--update`): the newest version of everything;
- `security` (`--update --security-only`): locked versions stay, except those the `-security`
  suites have a newer version of;
- `check=True` (`--check`): what `update` (or `security`) would change, with nothing written.

Each reports the changes package by package, a change to a version from a `-security` suite
marked as a security update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from debian.debian_support import version_compare

from mk.engine.errors import MkError, a_or_an
from mk.engine.targets import Target
from mk.engine.workspace import Workspace
from mk.rules.cache_parts import DEBIAN_INDICES
from mk.rules.deb.index import Candidate, read_indices, verified_indices
from mk.rules.deb.lockfile import LockedPackage, Lockfile, Manifest
from mk.rules.deb.mirrors import SECURITY, Mirrors, archive_of, mirrors_from
from mk.rules.deb.resolve import resolve
from mk.rules.deb.rule import architecture, lock_path, manifest
from mk.rules.deb.snapshot import snapshot_times
from mk.rules.deb.source_rule import source_manifest
from mk.rules.deb.sources import SourceLockfile, choose, parse_sources

Mode = Literal["keep", "update", "security"]
T = TypeVar("T")


@dataclass(frozen=True)
class Change:
    name: str
    old: str | None  # None: newly in the set
    new: str | None  # None: no longer in it
    security: bool  # the new version comes from a -security suite

    def line(self) -> str:
        mark = " (security)" if self.security else ""
        if self.old is None:
            return f"+ {self.name} {self.new}{mark}"
        if self.new is None:
            return f"- {self.name} {self.old}"
        return f"{self.name} {self.old} -> {self.new}{mark}"


@dataclass(frozen=True)
class LockReport:
    path: Path
    packages: int
    changed: bool  # the lockfile was rewritten
    changes: tuple[Change, ...]
    notes: tuple[str, ...] = ()  # what the person running it should know (no snapshot time, say)
    stale: bool = False  # the manifest changed since the lockfile was written
    unit: str = "package"  # what `packages` counts: a deb_source lockfile holds files

    @property
    def security_updates(self) -> int:
        return sum(c.security for c in self.changes)


LOCKED_RULES = ("deb_packages", "deb_source")


def require_lockable(target: Target) -> None:
    """An error unless `target` has a lockfile for `mk lock` to write."""
    if target.rule.name not in LOCKED_RULES:
        raise MkError(f"{target.label} is {a_or_an(target.rule.name)}; "
                      "`mk lock` works on deb_packages and deb_source targets")


def lock(workspace: Workspace, target: Target, cache_root: Path, mode: Mode = "keep",
         check: bool = False, platform_arch: str = "amd64") -> LockReport:
    """`platform_arch`: the target platform's architecture, which a deb_packages set without an
    `architecture` of its own is resolved for, into that architecture's lockfile."""
    require_lockable(target)
    rule = target.rule.name
    try:
        return _lock(workspace, target, cache_root, mode, check, platform_arch)
    except MkError as e:  # an archive, a package or a pin: said of the target, at its place in the BUILD file
        raise MkError(f"{rule} {target.label}: {e.message}", e.location or target.location) from None


def lockfile(workspace: Workspace, target: Target, platform_arch: str) -> Path:
    """The lockfile `lock` writes for `target` and `platform_arch`: a set with an `architecture` of
    its own, and a source, have one for every platform."""
    return workspace.root / target.label.package / lock_path(target.label.name, target.attrs,
                                                             _architecture(target, platform_arch))


def _architecture(target: Target, platform_arch: str) -> str:
    # A source package has no architecture: its one lockfile is named as the first one's.
    return "amd64" if target.rule.name == "deb_source" else architecture(target.attrs, platform_arch)


def _lock(workspace: Workspace, target: Target, cache_root: Path, mode: Mode, check: bool,
          platform_arch: str) -> LockReport:
    attrs = target.attrs
    source = target.rule.name == "deb_source"
    arch = _architecture(target, platform_arch)
    path = lockfile(workspace, target, platform_arch)
    keyring = Path(str(attrs["keyring"]))
    if not keyring.is_absolute():
        keyring = workspace.root / keyring
    mirrors = mirrors_from(workspace.settings)
    if source:
        old_source = _existing(path, target, check, SourceLockfile.loads)
        return _lock_source(path, source_manifest(dict(attrs)), mirrors, keyring, cache_root, mode, check, old_source)
    wanted = manifest(attrs, arch)
    old = _existing(path, target, check, Lockfile.loads)
    indices = read_indices(mirrors, list(wanted.suites), list(wanted.components), wanted.architecture,
                           keyring, cache_root / DEBIAN_INDICES.name)
    locked = {p.name: p.version for p in old.packages} if old else {}
    prefer = locked if mode == "keep" else _security_kept(locked, indices.candidates) if mode == "security" else {}
    chosen = resolve(indices.candidates, wanted.architecture, wanted.excludes, wanted.packages, prefer)
    changes = _changes(locked, chosen) if old is not None else ()  # (a first lock lists no changes)
    stale = old is not None and old.manifest_digest != wanted.digest()
    if check:
        return LockReport(path, len(chosen), False, changes, stale=stale)
    packages = tuple(LockedPackage.of(c) for c in chosen)
    # The same set as before: the snapshots that held it still do (and the lockfile stays as it is).
    times = dict(old.snapshots) if old is not None and set(old.packages) == set(packages) else {}
    untimed = [(s, archive_of(s)) for s in wanted.suites if archive_of(s) not in times]
    found = snapshot_times(mirrors, indices.released, untimed)
    times.update(found.times)
    changed = _write(path, Lockfile(wanted.digest(), packages, times).dumps())
    return LockReport(path, len(chosen), changed, changes, found.notes, stale)


def _lock_source(path: Path, wanted: Manifest, mirrors: Mirrors, keyring: Path, cache_root: Path, mode: Mode,
                 check: bool, old: SourceLockfile | None) -> LockReport:
    """A source package, resolved as the modes above resolve a binary one: the locked version
    while the archive has it (`keep`), or unless -security has a newer one (`security`), else the
    newest version the suites' signed Sources indices list."""
    sources = [package for archive, suite, _, index in verified_indices(
        mirrors, list(wanted.suites), list(wanted.components), "source/Sources", keyring,
        cache_root / DEBIAN_INDICES.name) for package in parse_sources(index, archive, suite)]
    newest = choose(sources, wanted.packages[0])
    locked = old.source if old is not None and old.source.name == newest.name else None
    chosen = newest
    if locked is not None and locked in sources and mode != "update" and not (
            mode == "security" and newest.archive == SECURITY and version_compare(newest.version, locked.version) > 0):
        chosen = locked
    changes = () if locked is None or locked.version == chosen.version else (
        Change(chosen.name, locked.version, chosen.version, chosen.archive == SECURITY),)
    stale = old is not None and old.manifest_digest != wanted.digest()
    changed = False if check else _write(path, SourceLockfile(wanted.digest(), chosen).dumps())
    return LockReport(path, len(chosen.files), changed, changes, stale=stale, unit="file")


def _write(path: Path, text: str) -> bool:
    """Write the lockfile beside the BUILD file, unless it already says `text`; whether it wrote."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True


def _existing(path: Path, target: Target, required: bool, loads: Callable[[str], T]) -> T | None:
    """The lockfile as it is (read by `loads`, which raises ValueError on anything else); None when
    there is none, or it cannot be read and is about to be written anew. Checking needs one."""
    shown = f"{target.label.package}/{path.name}".lstrip("/")
    try:
        return loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise MkError(f"no lockfile '{shown}' to check; run `mk lock {target.label}` to create it") from None
    except ValueError as e:
        if required:
            raise MkError(f"lockfile '{shown}' is unreadable ({e}); run `mk lock {target.label}`") from None
    return None


def _security_kept(locked: dict[str, str], candidates: list[Candidate]) -> dict[str, str]:
    """The locked versions, except where a -security suite has a newer one: that one instead."""
    prefer = dict(locked)
    for c in candidates:
        if c.name in locked and c.archive == SECURITY and version_compare(c.version, prefer[c.name]) > 0:
            prefer[c.name] = c.version
    return prefer


def _changes(locked: dict[str, str], chosen: list[Candidate]) -> tuple[Change, ...]:
    new = {c.name: c for c in chosen}
    changes = [Change(name, locked.get(name), c.version, c.archive == SECURITY)
               for name, c in new.items() if locked.get(name) != c.version]
    changes += [Change(name, version, None, False) for name, version in locked.items() if name not in new]
    return tuple(sorted(changes, key=lambda c: c.name))
