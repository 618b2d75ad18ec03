"""Debian source packages: the Sources index, the version chosen from it, and its lockfile.

A source package is a .dsc and the tarballs it lists (.orig.tar.*, .debian.tar.*), in one pool
folder. `mk lock` chooses the newest version in the suites (or the pinned one) and writes each
file's sha256 and size into the lockfile, which the build fetches them by.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from debian.debian_support import version_compare

from mk.cache.tree import shown
from mk.engine.errors import MkError, did_you_mean
from mk.rules.deb.grammar import GrammarError, check_package
from mk.rules.deb.lockfile import FORMAT, read_document
from mk.rules.deb.mirrors import MAIN, SECURITY

ARCHITECTURE = "source"  # in a source package's manifest, where a binary set has its architecture


@dataclass(frozen=True)
class SourceFile:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class SourcePackage:
    """One version of a source package as the Sources index lists it (and as its lockfile holds it)."""

    name: str
    version: str
    archive: str
    directory: str  # the pool folder, relative to the archive root
    files: tuple[SourceFile, ...]

    @property
    def dsc(self) -> SourceFile:
        return next(f for f in self.files if f.name.endswith(".dsc"))

    def checked(self) -> SourcePackage:
        """Itself, when every field is one Debian's grammar allows (each becomes part of a path or URL)."""
        check_package(self.name, self.version, ARCHITECTURE, source=self.name)
        for file in self.files:
            check_package(self.name, self.version, ARCHITECTURE, path=f"{self.directory}/{file.name}")
            if "/" in file.name:
                raise GrammarError(f"package '{self.name}': file '{shown(file.name)}' is not a plain file name")
            if len(file.sha256) != 64 or any(c not in "0123456789abcdef" for c in file.sha256):
                raise GrammarError(f"package '{self.name}': file '{file.name}' has no valid sha256")
        if self.archive not in (MAIN, SECURITY):
            raise GrammarError(f"package '{self.name}': archive '{shown(self.archive)}' is neither '{MAIN}' nor "
                               f"'{SECURITY}'")
        if sum(f.name.endswith(".dsc") for f in self.files) != 1:
            raise GrammarError(f"package '{self.name}' {self.version} does not list exactly one .dsc file")
        return self


def parse_sources(index: bytes, archive: str, suite: str) -> list[SourcePackage]:
    """The packages of a Sources index; a malformed one is an error naming the suite."""
    from debian import deb822  # python-debian is slow to import: only `mk lock` needs it

    found = []
    for p in deb822.Sources.iter_paragraphs(io.BytesIO(index), use_apt_pkg=False):
        try:
            files = tuple(SourceFile(f["name"], f["sha256"], int(f["size"])) for f in p.get("Checksums-Sha256", []))
            found.append(SourcePackage(p["Package"], p["Version"], archive, p["Directory"], files).checked())
        except (KeyError, ValueError) as e:
            raise MkError(f"suite {suite}: source package {shown(p.get('Package', '?'))}: {e}") from None
    return found


def choose(candidates: Iterable[SourcePackage], wanted: str) -> SourcePackage:
    """The newest version of the source package `wanted` ('name' or 'name=version')."""
    name, _, version = wanted.partition("=")
    by_name: dict[str, list[SourcePackage]] = {}
    for candidate in candidates:
        by_name.setdefault(candidate.name, []).append(candidate)
    if name not in by_name:
        raise MkError(f"source package '{name}' is not in the Sources indices{did_you_mean(name, by_name)}")
    versions = sorted(by_name[name], key=functools.cmp_to_key(_newer_first))
    if not version:
        return versions[0]
    chosen = next((c for c in versions if c.version == version), None)
    if chosen is None:
        available = ", ".join(dict.fromkeys(c.version for c in versions))
        raise MkError(f"version {version} of source package '{name}' is not in the indices; available: {available}")
    return chosen


def _newer_first(a: SourcePackage, b: SourcePackage) -> int:
    return version_compare(b.version, a.version)


@dataclass(frozen=True)
class SourceLockfile:
    manifest_digest: str
    source: SourcePackage

    def dumps(self) -> str:
        return json.dumps({"format": FORMAT, "manifest_digest": self.manifest_digest, "source": asdict(self.source)},
                          indent=2, sort_keys=True) + "\n"

    @staticmethod
    def loads(text: str) -> SourceLockfile:
        """Raises ValueError on anything that is not a source lockfile this version of mk wrote."""
        def build(document: dict[str, Any]) -> SourceLockfile:
            s = document["source"]
            files = tuple(SourceFile(str(f["name"]), str(f["sha256"]), int(f["size"])) for f in s["files"])
            source = SourcePackage(str(s["name"]), str(s["version"]), str(s["archive"]), str(s["directory"]), files)
            return SourceLockfile(str(document["manifest_digest"]), source.checked())

        return read_document(text, build)
