"""`mk lock TARGET`: resolve a deb_packages manifest against the archives and write its lockfile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mk.engine.errors import MkError, a_or_an
from mk.engine.targets import Target
from mk.engine.workspace import Workspace
from mk.rules.cache_parts import DEBIAN_INDICES
from mk.rules.deb.index import read_indices
from mk.rules.deb.lockfile import LockedPackage, Lockfile
from mk.rules.deb.mirrors import find_mirrors
from mk.rules.deb.resolve import Resolver
from mk.rules.deb.rule import lock_path, manifest


@dataclass(frozen=True)
class LockReport:
    path: Path
    packages: int
    changed: bool


def lock(workspace: Workspace, target: Target, cache_root: Path) -> LockReport:
    if target.rule.name != "deb_packages":
        raise MkError(f"{target.label} is {a_or_an(target.rule.name)}; `mk lock` works on deb_packages targets")
    try:
        return _lock(workspace, target, cache_root)
    except MkError as e:  # an archive, a package or a pin: said of the target, at its place in the BUILD file
        raise MkError(f"deb_packages {target.label}: {e.message}", e.location or target.location) from None


def _lock(workspace: Workspace, target: Target, cache_root: Path) -> LockReport:
    attrs = target.attrs
    wanted = manifest(attrs)
    keyring = Path(str(attrs["keyring"]))
    if not keyring.is_absolute():
        keyring = workspace.root / keyring
    settings = workspace.settings
    mirrors = find_mirrors(_text(settings.get("debian_mirror")), _text(settings.get("debian_security_mirror")))
    candidates = read_indices(mirrors, list(wanted.suites), list(wanted.components), wanted.architecture,
                              keyring, cache_root / DEBIAN_INDICES.name)
    chosen = Resolver(candidates, wanted.architecture, wanted.excludes).resolve(wanted.packages)
    lockfile = Lockfile(wanted.digest(), tuple(LockedPackage.of(c) for c in chosen))
    package_dir = workspace.root / target.label.package
    path = package_dir / lock_path(target.label.name, attrs)
    text = lockfile.dumps()
    changed = not path.is_file() or path.read_text(encoding="utf-8") != text
    if changed:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return LockReport(path, len(chosen), changed)


def _text(value: object) -> str | None:
    return None if value is None else str(value)
