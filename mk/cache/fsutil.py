"""Atomic file writes: a reader never sees a half-written file, whatever happens to the writer.

A write that fails because the disk is full raises `CacheFileError`, which names the file: an
OSError still (for callers that handle those), which the command line shows without a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

T = TypeVar("T")

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CacheFileError(OSError):
    """A file of the cache that cannot be written or used, said in words with its path."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.errno = code
        self.message = message

    def __str__(self) -> str:
        return self.message


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a temp file beside `path`; rename it into place only if the block succeeds."""
    import tempfile  # imports shutil: a no-op build writes nothing and never needs it

    with _full_disk_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.name[-16:])
        try:
            with os.fdopen(fd, "wb") as tmp:
                yield tmp
                tmp.flush()
            os.chmod(tmp_name, mode)
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise


@contextlib.contextmanager
def _full_disk_named(path: Path) -> Iterator[None]:
    """Turn a full disk's OSError into one that names `path` (a bare errno 28 names nothing)."""
    try:
        yield
    except OSError as e:
        if e.errno in _DISK_FULL and not isinstance(e, CacheFileError):
            raise CacheFileError(f"cannot write {path}: the disk is full ({e.strerror})", e.errno) from None
        raise


def mark_used(path: Path | str) -> None:
    """Set the modification time of `path` to now. Garbage collection takes it for when the file
    was last used (see `cache.parts`), so mk marks what it reads back. A file gone is no matter."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    with atomic_writer(path, mode) as out:
        out.write(data)


# path -> (the file's identity, what `parse` made of it); see `read_parsed`.
_parsed: dict[str, tuple[tuple[int, int, int], object]] = {}


def read_parsed(path: Path, parse: Callable[[bytes], T]) -> T:
    """`parse` of the bytes of `path`, remembered in this process while the file stays the one it
    was (same inode, size and modification time: files written here are replaced by renames, never
    changed in place). The build server then reads its records of a 10,000-action workspace once,
    not after every build. Callers must not change what it returns. Raises OSError as reading does."""
    key = str(path)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        known = _parsed.get(key)
        if known is not None and known[0] == identity:
            return known[1]  # type: ignore[return-value]  # what `parse` made of these very bytes
        value = parse(f.read())
    _parsed[key] = (identity, value)
    return value


def write_parsed(path: Path, data: bytes, value: object) -> None:
    """`write_atomic`, and remember that `value` is what these bytes parse to, for `read_parsed`."""
    with atomic_writer(path) as out:
        out.write(data)
        out.flush()
        st = os.fstat(out.fileno())  # the rename keeps the inode, size and modification time
    _parsed[str(path)] = ((st.st_ino, st.st_size, st.st_mtime_ns), value)
