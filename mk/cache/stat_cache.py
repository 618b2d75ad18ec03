"""Remembers the digest of each source file against its (mtime_ns, size, inode, ctime_ns).

A file is re-hashed only when that tuple changes, so a no-op build reads no file contents.
An entry hashed within `RACY_NS` of the file's mtime is not trusted next time: the file could
have been rewritten within one timestamp tick after we hashed it (git's "racily clean" case).
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from mk.cache.cas import digest_file
from mk.cache.fsutil import mark_used, write_atomic
from mk.cache.seal import seal, unseal

RACY_NS = 50_000_000

# path -> [mtime_ns, size, ino, ctime_ns, hashed_at_ns, digest, executable]
_Entry = list[object]


@dataclass(frozen=True)
class FileDigest:
    digest: str
    executable: bool


def _load(file: Path) -> dict[str, _Entry]:
    """The entries saved in `file`: none if it is missing or damaged (every source is then hashed
    again, which is slower but never wrong).

    The file starts with the blake3 of the rest: an entry whose digest changed by a flipped bit
    would otherwise name other contents for an unchanged file, for good."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return {}
    payload = unseal(data)
    if payload is None:
        return _damaged(file, "its checksum does not match")
    try:
        loaded = msgpack.unpackb(payload)
    except (ValueError, TypeError, msgpack.UnpackException):
        return _damaged(file, "not msgpack")
    return loaded if isinstance(loaded, dict) else _damaged(file, "not a map")


def _damaged(file: Path, why: str) -> dict[str, _Entry]:
    print(f"mk: warning: the stat cache {file} is damaged ({why}); hashing every source again", file=sys.stderr)
    return {}


class StatCache:
    def __init__(self, file: Path) -> None:
        self.file = file
        self.hashes = 0
        self._dirty = False
        self._entries: dict[str, _Entry] = _load(file)
        # Set by the build server: the files that inotify says are unchanged since they were last
        # checked here, answered without a stat (see mk.engine.memory).
        self.trusted: set[str] | None = None

    def forget_trust(self, files: Iterable[str], folders: Iterable[str]) -> None:
        """The files changed, and so may everything under the folders: check them again."""
        if self.trusted is None:
            return
        self.trusted.difference_update(files)
        for folder in folders:
            prefix = folder + "/"
            self.trusted.difference_update([key for key in self.trusted if key.startswith(prefix) or key == folder])

    def digest(self, path: str | Path) -> FileDigest:
        """The blake3 of the file at `path`; raises FileNotFoundError if it is gone.

        Raises IsADirectoryError for a directory: only regular files (or links to them) count.
        """
        key = str(path)
        trusted = self._trusted_entry(key)
        if trusted is not None:
            return FileDigest(str(trusted[5]), bool(trusted[6]))
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        entry = self._entries.get(key)
        if (
            isinstance(entry, list)
            and len(entry) == 7
            and entry[0] == st.st_mtime_ns
            and entry[1] == st.st_size
            and entry[2] == st.st_ino
            and entry[3] == st.st_ctime_ns
            and isinstance(entry[4], int)
            and entry[4] - st.st_mtime_ns >= RACY_NS
        ):
            if self.trusted is not None:
                self.trusted.add(key)
            return FileDigest(str(entry[5]), bool(entry[6]))
        hashed_at = time.time_ns()
        result = FileDigest(digest_file(path), bool(st.st_mode & stat.S_IXUSR))
        self.hashes += 1
        self._remember(key, st, hashed_at, result)
        if self.trusted is not None:  # an edit from now on is an inotify event, racily clean or not
            self.trusted.add(key)
        return result

    def holds(self, path: str, want: FileDigest) -> bool:
        """Whether `path` is known, without a look at it, to hold `want`: it is trusted (see
        `digest`) with that digest. False says nothing; ask `digest` then."""
        entry = self._trusted_entry(path)
        return entry is not None and entry[5] == want.digest and bool(entry[6]) == want.executable

    def _trusted_entry(self, key: str) -> _Entry | None:
        """The entry of a path the watcher vouches for (see `digest`), else None. `holds` asks this
        without building a FileDigest: the server asks it for every kept output."""
        if self.trusted is None or key not in self.trusted:
            return None
        return self._entries[key]

    def record_written(self, path: str | Path, digest: FileDigest) -> None:
        """Remember a file mk itself just wrote, so the next build need not read it back."""
        st = os.stat(path)
        self._remember(str(path), st, st.st_mtime_ns + RACY_NS, digest)

    def _remember(self, key: str, st: os.stat_result, hashed_at: int, d: FileDigest) -> None:
        self._entries[key] = [
            st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns, hashed_at, d.digest, d.executable
        ]
        self._dirty = True

    def save(self) -> None:
        if self._dirty:
            write_atomic(self.file, seal(msgpack.packb(self._entries)))
            self._dirty = False
        else:
            mark_used(self.file)
