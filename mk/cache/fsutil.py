"""Atomic file writes: a reader never sees a half-written file, whatever happens to the writer.

A write that fails because the disk is full raises `CacheFileError`, which names the file: an
OSError still (for callers that handle those), which the command line shows without a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

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
def atomic_writer(path: Path, mode: int = 0o644, exchange: bool = False) -> Iterator[BinaryIO]:
    """Yield a temp file beside `path`; rename it into place only if the block succeeds. With
    `exchange`, a file already at `path` is swapped out rather than renamed over (see `_exchange`)."""
    import tempfile  # imports shutil: a no-op build writes nothing and never needs it

    with _full_disk_named(path):
        try:
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.name[-16:])
        except FileNotFoundError:  # the folder's first file: made then, not asked for every write
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.name[-16:])
        try:
            with os.fdopen(fd, "wb") as tmp:
                yield tmp
                tmp.flush()
            os.chmod(tmp_name, mode)
            if not (exchange and _exchange(tmp_name, path)):
                os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise


_RENAME_EXCHANGE = 2  # renameat2's flag (linux/fs.h)
_AT_FDCWD = -100


def _exchange(temp: str, path: Path) -> bool:
    """Swap the finished `temp` with the regular file at `path`, atomically, then remove the old one
    (now at `temp`); False where that cannot be done (nothing there, not Linux, a file system
    without exchange), for a rename instead. Why: ext4 starts writing out a file renamed over
    another at once (auto_da_alloc), which made placing a new 16 MB initrd cost as much as copying it.
    A crash between the two steps leaves the old file under the temp name, which is swept as any."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        renameat2 = _renameat2()
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(temp), _AT_FDCWD, os.fsencode(path), _RENAME_EXCHANGE) != 0:
        return False
    os.unlink(temp)
    return True


@functools.cache
def _renameat2() -> Any:
    """glibc's renameat2 (Python has no binding of it); AttributeError where libc lacks it."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True).renameat2


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


def copy_range(source: int, target: int, count: int, start: int = 0) -> None:
    """`count` bytes of `source` from `start` to `target` at its file offset, in the kernel where it can.

    The source's offset is given, not taken from the descriptor: a buffered reader's seek may
    leave the descriptor elsewhere."""
    offset, count = start, start + count
    try:
        while offset < count:
            done = os.copy_file_range(source, target, count - offset, offset)
            if done == 0:
                raise EOFError(f"the source ended at byte {offset}, not {count}")
            offset += done
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
            raise
    while offset < count:  # across filesystems, or where copy_file_range is missing
        done = os.sendfile(target, source, offset, count - offset)
        if done == 0:
            raise EOFError(f"the source ended at byte {offset}, not {count}")
        offset += done


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
