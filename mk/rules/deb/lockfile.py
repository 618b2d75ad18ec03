"""The lockfile: the resolved package set, checked into the workspace, sorted and stable.

It records a digest of the manifest it was made from, so a build whose manifest has changed
since the last `mk lock` stops and says so instead of quietly using the old set.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from mk.cache.tree import shown
from mk.rules.deb.grammar import GrammarError, check_package
from mk.rules.deb.mirrors import MAIN, SECURITY

if TYPE_CHECKING:
    from mk.rules.deb.index import Candidate

FORMAT = 1


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

    def dumps(self) -> str:
        document = {
            "format": FORMAT,
            "manifest_digest": self.manifest_digest,
            "packages": [asdict(p) for p in sorted(self.packages, key=lambda p: (p.name, p.architecture))],
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @staticmethod
    def loads(text: str) -> Lockfile:
        """Raises ValueError on anything that is not a lockfile this version of mk wrote."""
        try:
            document = json.loads(text)
            if document.get("format") != FORMAT:
                raise ValueError(f"unknown lockfile format {document.get('format')!r}")
            packages = tuple(
                _checked(LockedPackage(
                    str(p["name"]), str(p["version"]), str(p["architecture"]), str(p["archive"]), str(p["path"]),
                    _sha256(p["sha256"]), int(p["size"]), str(p["source"]),
                ))
                for p in document["packages"]
            )
            return Lockfile(str(document["manifest_digest"]), packages)
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"malformed lockfile: {e}") from None


def _checked(package: LockedPackage) -> LockedPackage:
    """The package, if every field is one Debian's grammar allows: each becomes part of a path or URL."""
    p = package
    check_package(p.name, p.version, p.architecture, path=p.path, source=p.source)
    if p.archive not in (MAIN, SECURITY):
        raise GrammarError(f"package '{p.name}': archive '{shown(p.archive)}' is neither '{MAIN}' nor '{SECURITY}'")
    return package


def _sha256(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"not a sha256: {value!r}")
    return value
