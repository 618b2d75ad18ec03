"""The lockfile: the resolved package set, checked into the workspace, sorted and stable.

It records a digest of the manifest it was made from, so a build whose manifest has changed
since the last `mk lock` stops and says so instead of quietly using the old set; and, when `mk
lock` could tell, the time of a snapshot archive that holds every package of the set, for each
archive (`snapshots`), so the set can be fetched after the mirror has dropped it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from mk.cache.tree import shown
from mk.rules.deb.grammar import GrammarError, check_package
from mk.rules.deb.mirrors import MAIN, SECURITY, SNAPSHOT_TIME

if TYPE_CHECKING:
    from mk.rules.deb.index import Candidate

FORMAT = 1
T = TypeVar("T")


@dataclass(frozen=True)
class Manifest:
    suites: tuple[str, ...]
    components: tuple[str, ...]
    architecture: str
    packages: tuple[str, ...]
    excludes: tuple[str, ...]

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    architecture: str
    archive: str  # "debian" or "debian-security": which base URL to fetch `path` from
    path: str  # pool path relative to the archive root
    sha256: str
    size: int
    source: str

    @staticmethod
    def of(c: Candidate) -> LockedPackage:
        return LockedPackage(c.name, c.version, c.architecture, c.archive, c.path, c.sha256, c.size, c.source)


@dataclass(frozen=True)
class Lockfile:
    manifest_digest: str
    packages: tuple[LockedPackage, ...]
    snapshots: Mapping[str, str] = field(default_factory=dict)  # archive -> snapshot time (YYYYMMDDTHHMMSSZ)

    def dumps(self) -> str:
        document: dict[str, object] = {
            "format": FORMAT,
            "manifest_digest": self.manifest_digest,
            "packages": [asdict(p) for p in sorted(self.packages, key=lambda p: (p.name, p.architecture))],
        }
        if self.snapshots:  # (absent rather than empty: a lockfile without one reads as before)
            document["snapshots"] = dict(sorted(self.snapshots.items()))
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @staticmethod
    def loads(text: str) -> Lockfile:
        """Raises ValueError on anything that is not a lockfile this version of mk wrote."""
        def build(document: dict[str, Any]) -> Lockfile:
            packages = tuple(
                _checked(LockedPackage(
                    str(p["name"]), str(p["version"]), str(p["architecture"]), str(p["archive"]), str(p["path"]),
                    _sha256(p["sha256"]), int(p["size"]), str(p["source"]),
                ))
                for p in document["packages"]
            )
            return Lockfile(str(document["manifest_digest"]), packages, _snapshots(document.get("snapshots", {})))

        return read_document(text, build)


def read_document(text: str, build: Callable[[dict[str, Any]], T]) -> T:
    """What `build` makes of a lockfile of this mk's format; ValueError for anything else."""
    try:
        document = json.loads(text)
        found = document.get("format") if isinstance(document, dict) else None
        if found != FORMAT:
            raise ValueError(f"unknown lockfile format {found!r}")
        return build(document)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"malformed lockfile: {e}") from None


def _checked(package: LockedPackage) -> LockedPackage:
    """The package, if every field is one Debian's grammar allows: each becomes part of a path or URL."""
    p = package
    check_package(p.name, p.version, p.architecture, path=p.path, source=p.source)
    if p.archive not in (MAIN, SECURITY):
        raise GrammarError(f"package '{p.name}': archive '{shown(p.archive)}' is neither '{MAIN}' nor '{SECURITY}'")
    return package


def _snapshots(value: object) -> dict[str, str]:
    """archive -> time; each becomes part of a URL, so each must be exactly what it says."""
    if not isinstance(value, dict):
        raise ValueError(f"snapshots is not a map of archive to time: {value!r}")
    for archive, time in value.items():
        if archive not in (MAIN, SECURITY):
            raise ValueError(f"snapshots: '{shown(str(archive))}' is neither '{MAIN}' nor '{SECURITY}'")
        if not isinstance(time, str) or not SNAPSHOT_TIME.fullmatch(time):
            raise ValueError(f"snapshots: {archive}: not a time of the form 20240601T000000Z: {time!r}")
    return dict(value)


def _sha256(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"not a sha256: {value!r}")
    return value
