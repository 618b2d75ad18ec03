"""Reads a .deb (an ar archive) into a tree without unpacking it anywhere.

The data tarball goes through the safe tarball import, so a package cannot write outside its
tree. Paths are moved to Debian 12's merged /usr (`bin/ls` becomes `usr/bin/ls`, relative
symlinks are re-pointed); the `bin -> usr/bin` links themselves are added when packages are
merged. Maintainer scripts are read but never run.
"""

from __future__ import annotations

import io
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree, TreeError, shown
from mk.rules.deb.grammar import GrammarError, check_package
from mk.rules.formats.compression import decompressed
from mk.rules.tarball import UnsafeArchiveError, import_tar, read_tar

MERGED_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_AR_MAGIC = b"!<arch>\n"
_COMPRESSIONS = {".gz": "gzip", ".xz": "xz", ".bz2": "bzip2", ".zst": "zstd", ".tar": "none"}
_CONTROL_FIELDS = re.compile(r"^(Package|Version|Architecture):[ \t]*(\S*)[ \t]*$", re.MULTILINE)


class DebError(ValueError):
    pass


@dataclass(frozen=True)
class DebContents:
    tree: Tree
    control: str  # the control file: the package's paragraph for the dpkg status database
    md5sums: str
    conffiles: str
    paths: tuple[str, ...]  # as the package ships them, for /var/lib/dpkg/info/<pkg>.list


def read_deb(source: BinaryIO, cas: ContentStore, what: str) -> DebContents:
    control: dict[str, str] | None = None
    tree: Tree | None = None
    for name, member in _ar_members(source, what):
        if name == "debian-binary":
            version = member.read().decode(errors="replace").strip()
            if not version.startswith("2."):
                raise DebError(f"{what}: unsupported .deb format version '{version}'")
        elif name.startswith("control.tar"):
            control = _control_files(_decompressed(name, member, what), f"{what} ({name})")
        elif name.startswith("data.tar"):
            try:
                tree = import_tar(_decompressed(name, member, what), cas, f"{what} ({name})")
            except UnsafeArchiveError as e:
                raise DebError(str(e)) from None
    if control is None or tree is None or "control" not in control:
        raise DebError(f"{what}: not a complete .deb (no control or data member)")
    fields = dict(_CONTROL_FIELDS.findall(control["control"]))
    try:
        check_package(fields.get("Package", ""), fields.get("Version", ""), fields.get("Architecture", ""))
    except GrammarError as e:
        raise DebError(f"{what}: control file: {e}") from None
    paths = tuple(e.path for e in tree.entries)
    # Each path becomes a line of /var/lib/dpkg/info/<package>.list, which dpkg removes on purge.
    if (bad := next((p for p in paths if "\n" in p), None)) is not None:
        raise DebError(f"{what}: path '{shown(bad)}' holds a newline, which a dpkg file list cannot (dpkg "
                       "refuses such packages too)")
    try:
        merged = merge_usr(tree)
    except TreeError as e:
        raise DebError(f"{what}: {e}") from None
    return DebContents(merged, control["control"], control.get("md5sums", ""), control.get("conffiles", ""), paths)


def _ar_members(source: BinaryIO, what: str) -> Iterator[tuple[str, _Bounded]]:
    if source.read(8) != _AR_MAGIC:
        raise DebError(f"{what}: not a .deb (no ar header)")
    while header := source.read(60):
        if len(header) < 60 or header[58:60] != b"`\n":
            raise DebError(f"{what}: truncated or corrupt ar header")
        name = header[:16].decode(errors="replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode().strip())
        except ValueError:
            raise DebError(f"{what}: corrupt ar member size") from None
        member = _Bounded(source, size, what)
        yield name, member
        member.skip_rest()
        if size % 2:
            source.read(1)


class _Bounded(io.RawIOBase):
    """Reads at most `size` bytes of the underlying stream; a short stream means truncation."""

    def __init__(self, source: BinaryIO, size: int, what: str) -> None:
        self.source, self.left, self.what = source, size, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left == 0:
            return 0
        data = self.source.read(min(len(buffer), self.left))
        if not data:
            raise DebError(f"{self.what}: the file is truncated")
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def skip_rest(self) -> None:
        while self.read(1 << 20):
            pass


def _decompressed(name: str, member: _Bounded, what: str) -> io.RawIOBase:
    """A reader of the member's uncompressed bytes, chosen by its name as dpkg-deb does."""
    kind = next((kind for suffix, kind in _COMPRESSIONS.items() if name.endswith(suffix)), None)
    if kind is None:
        raise DebError(f"{what}: member '{shown(name)}' has an unknown compression")
    return decompressed(member, kind)


def _control_files(stream: io.RawIOBase, what: str) -> dict[str, str]:
    files: dict[str, str] = {}

    def keep(member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        name = posixpath.normpath(member.name)
        if member.isreg() and name in ("control", "md5sums", "conffiles"):
            data = archive.extractfile(member)
            assert data is not None
            files[name] = data.read().decode("utf-8", errors="replace")

    try:
        read_tar(stream, what, keep)
    except UnsafeArchiveError as e:
        raise DebError(str(e)) from None
    return files


def usr_path(path: str) -> str:
    """Where a path lands on a merged-/usr system: 'bin/ls' -> 'usr/bin/ls'."""
    top = path.split("/", 1)[0]
    return f"usr/{path}" if top in MERGED_DIRS else path


def merge_usr(tree: Tree) -> Tree:
    """Raises TreeError when the package ships one path twice (as 'bin/ls' and 'usr/bin/ls') and the
    two differ: one would silently hide the other. Folders merge; the /usr one, the real folder on
    a merged system, keeps its mode and owner."""
    entries: dict[str, Entry] = {}
    shipped: dict[str, str] = {}  # where each entry's path came from
    for e in tree.entries:
        path = usr_path(e.path)
        target = e.target
        if e.kind is Kind.HARDLINK:
            target = usr_path(e.target)
        elif e.kind is Kind.SYMLINK and not target.startswith("/") and path != e.path:
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(e.path), target))
            target = posixpath.relpath(usr_path(resolved), posixpath.dirname(path) or ".")
        moved = e
        if path != e.path or target != e.target:
            moved = Entry(path, e.kind, e.mode, e.uid, e.gid, e.digest, e.size, target, e.major, e.minor)
        earlier = entries.get(path)
        if earlier is not None and earlier != moved and not (earlier.kind is moved.kind is Kind.DIR):
            raise TreeError(f"'{shipped[path]}' and '{e.path}' are both '{path}' on a merged-/usr system, "
                            "and they differ")
        entries[path], shipped[path] = moved, e.path
    return Tree.build(entries.values())
