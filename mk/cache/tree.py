"""Trees: content-addressed manifests of filesystems (layers, root filesystems, module sets).

A tree is a sorted list of entries; file contents live in the content store and the entry holds
their digest, so merging trees touches metadata only. The manifest is msgpack, and is itself
stored as a blob, so a tree's digest changes exactly when any file, mode or owner in it does.
"""

from __future__ import annotations

import enum
import functools
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from mk.globs import glob_regex

_FORMAT = 1
# A path `normalise` leaves as it is, matched in one go (Tree.check meets every entry of every tree):
# components without '/' or NUL that are neither '.' nor '..'.
_NORMALISED = re.compile(r"(?!\.\.?(?:/|$))[^/\0]+(?:/(?!\.\.?(?:/|$))[^/\0]+)*")
_MAX_STEPS = 4096  # path components a lookup walks, links included, before it calls the links a loop


class TreeError(ValueError):
    pass


class Kind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"  # `target` is the path of a FILE entry in the same tree
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


@dataclass(frozen=True, order=True)
class Entry:
    path: str  # relative to the tree root, normalised, never empty
    kind: Kind
    mode: int  # permission bits, including setuid/setgid/sticky (0o7777)
    uid: int = 0
    gid: int = 0
    digest: str = ""  # FILE: blake3 of the content
    size: int = 0  # FILE: bytes
    target: str = ""  # SYMLINK: link text; HARDLINK: path of the linked file
    major: int = 0  # CHAR/BLOCK
    minor: int = 0

    def encode(self) -> list[object]:
        return [self.path, self.kind.value, self.mode, self.uid, self.gid, self.digest, self.size,
                self.target, self.major, self.minor]

    @staticmethod
    def decode(raw: list[object]) -> Entry:
        path, kind, mode, uid, gid, digest, size, target, major, minor = raw
        return Entry(str(path), Kind(str(kind)), _int(mode), _int(uid), _int(gid), str(digest), _int(size),
                     str(target), _int(major), _int(minor))


# What Linux, and so every image format, can hold: permission bits only (the kind is separate),
# 32-bit owners, sizes below 2^63 (off_t), and the kernel's dev_t of a 12-bit major and a 20-bit
# minor. Refused in every tree, so no writer meets a number it would silently truncate.
MODE_MAX, ID_MAX, SIZE_MAX = 0o7777, (1 << 32) - 1, (1 << 63) - 1
MAJOR_MAX, MINOR_MAX = (1 << 12) - 1, (1 << 20) - 1
_LIMITS = {"mode": MODE_MAX, "uid": ID_MAX, "gid": ID_MAX, "size": SIZE_MAX, "major": MAJOR_MAX,
           "minor": MINOR_MAX}
_SHOWN = {"major": "device major", "minor": "device minor"}


def _out_of_range(entry: Entry) -> TreeError:
    """The error for an entry known to hold a number beyond _LIMITS."""
    field, limit = next((f, limit) for f, limit in _LIMITS.items() if getattr(entry, f) > limit)
    value: int = getattr(entry, field)
    shown = (oct(value), oct(limit)) if field == "mode" else (value, limit)
    return TreeError(f"'{entry.path}': {_SHOWN.get(field, field)} {shown[0]} is out of range (at most {shown[1]})")


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TreeError(f"expected a non-negative integer, got {value!r}")
    return value


def shown(text: str) -> str:
    """A path from an archive as errors show it: control characters escaped, so that a hostile
    name can neither hide in nor rewrite the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def normalise(path: str) -> str:
    """'./usr//bin/' -> 'usr/bin'. Raises TreeError for absolute paths, '..' components and NUL bytes
    (which no file name can hold)."""
    if "\0" in path:
        raise TreeError(f"'{shown(path)}' holds a NUL byte")
    if path.startswith("/"):
        raise TreeError(f"'{shown(path)}' is an absolute path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TreeError(f"'{shown(path)}' climbs out of the tree with '..'")
    if not parts:
        raise TreeError(f"'{shown(path)}' names the root of the tree")
    return "/".join(parts)


def dest_path(path: str) -> str:
    """A destination written in a BUILD file ('/etc/motd') as a tree path ('etc/motd')."""
    return normalise(path.lstrip("/"))


@dataclass(frozen=True)
class Tree:
    entries: tuple[Entry, ...]

    @staticmethod
    def build(entries: Iterable[Entry]) -> Tree:
        """Sorts entries, adds missing parent directories (0755, root) and checks the result."""
        by_path: dict[str, Entry] = {}
        for entry in entries:
            by_path[entry.path] = entry
        for path in list(by_path):
            parent = posixpath.dirname(path)
            while parent and parent not in by_path:
                by_path[parent] = Entry(parent, Kind.DIR, 0o755)
                parent = posixpath.dirname(parent)
        tree = Tree(tuple(by_path[p] for p in sorted(by_path)))
        tree.check()
        return tree

    def check(self) -> None:
        """Refuses what could escape the tree when it is unpacked or booted."""
        kinds = {e.path: e.kind for e in self.entries}
        for entry in self.entries:
            # Spelt out rather than looping over _LIMITS: this runs for every entry of every tree read.
            if (entry.mode > MODE_MAX or entry.uid > ID_MAX or entry.gid > ID_MAX or entry.size > SIZE_MAX
                    or entry.major > MAJOR_MAX or entry.minor > MINOR_MAX):
                raise _out_of_range(entry)
            if not _NORMALISED.fullmatch(entry.path) and normalise(entry.path) != entry.path:
                raise TreeError(f"'{entry.path}' is not a normalised path")
            parent = entry.path.rpartition("/")[0]  # (as posixpath.dirname: the path is normalised)
            if parent and kinds.get(parent) is not Kind.DIR:
                what = "a symlink" if kinds.get(parent) is Kind.SYMLINK else "not a directory"
                raise TreeError(f"'{entry.path}' lies under '{parent}', which is {what}")
            if entry.kind is Kind.HARDLINK and kinds.get(entry.target) is not Kind.FILE:
                raise TreeError(f"hard link '{entry.path}' points at '{entry.target}', which is not a file in the tree")
            if entry.kind is Kind.SYMLINK:
                check_symlink(entry.path, entry.target)

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb([_FORMAT, [e.encode() for e in self.entries]])
        return packed

    @staticmethod
    def decode(data: bytes) -> Tree:
        try:
            version, raw = msgpack.unpackb(data)
            if version != _FORMAT:
                raise TreeError(f"unknown tree format {version}")
            entries = tuple(Entry.decode(r) for r in raw)
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise TreeError(f"malformed tree manifest: {e}") from None
        if list(entries) != sorted(entries, key=lambda e: e.path):
            raise TreeError("malformed tree manifest: entries are not sorted")
        tree = Tree(entries)
        tree.check()
        return tree

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def decode_shared(data: bytes) -> Tree:
        """`decode`, remembered for the same bytes: a resident build server reads the same layers'
        trees on every build. A tree is immutable, so one may serve every reader."""
        return Tree.decode(data)

    def files(self) -> Iterable[Entry]:
        return (e for e in self.entries if e.kind is Kind.FILE)

    def lookup(self, path: str) -> Entry | None:
        """The entry at `path` as the booted system sees it: symlinks followed, in the folders on the
        way too (`lib/x` through `lib -> usr/lib`), and a hard link as the file it links to. None
        when nothing is there or the links go round in a loop."""
        pending = [p for p in path.split("/") if p not in ("", ".")]
        resolved: list[str] = []
        entry: Entry | None = None
        for _ in range(_MAX_STEPS):
            if not pending:
                if entry is not None and entry.kind is Kind.HARDLINK:
                    return self._by_path.get(entry.target)
                return entry
            part = pending.pop(0)
            if part == "..":
                resolved = resolved[:-1]
                continue
            entry = self._by_path.get("/".join([*resolved, part]))
            if entry is None:
                return None
            if entry.kind is Kind.SYMLINK:
                pending = [p for p in entry.target.split("/") if p not in ("", ".")] + pending
                resolved = [] if entry.target.startswith("/") else resolved
                entry = self._by_path.get("/".join(resolved)) if resolved else None
            else:
                resolved.append(part)
        return None

    @functools.cached_property
    def _by_path(self) -> dict[str, Entry]:
        return {e.path: e for e in self.entries}


def check_symlink(path: str, target: str) -> None:
    """A relative link may not climb above the root. Absolute links resolve inside the image."""
    if not target or "\0" in target:
        raise TreeError(f"symlink '{shown(path)}' has an empty or invalid target")
    if target.startswith("/"):
        return
    depth = path.count("/")
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise TreeError(f"symlink '{shown(path)}' -> '{shown(target)}' escapes the tree")
        elif part not in ("", "."):
            depth += 1


def merge(trees: Iterable[Tree], remove: Iterable[str] = ()) -> Tree:
    """Overlay trees in order (later wins), then drop paths matching `remove` and what is under them.

    A later non-directory replacing a directory hides everything the earlier layers had under it.
    """
    by_path: dict[str, Entry] = {}
    for tree in trees:
        for entry in tree.entries:
            old = by_path.get(entry.path)
            if old is not None and old.kind is Kind.DIR and entry.kind is not Kind.DIR:
                prefix = entry.path + "/"
                for path in [p for p in by_path if p.startswith(prefix)]:
                    del by_path[path]
            by_path[entry.path] = entry
    patterns = [glob_regex(normalise(p.lstrip("/"))) for p in remove]
    removed = [p for p in by_path if any(r.fullmatch(p) for r in patterns)]
    for path in removed:
        prefix = path + "/"
        for child in [p for p in by_path if p == path or p.startswith(prefix)]:
            by_path.pop(child, None)
    dangling = [e.path for e in by_path.values() if e.kind is Kind.HARDLINK and e.target not in by_path]
    for path in dangling:
        del by_path[path]
    return Tree.build(by_path.values())
