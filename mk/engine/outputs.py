"""Places built files under `mk-out/` at the workspace root, for people and other tools.

Each file is written to a temp file beside it and renamed into place. While a build writes
there, a marker `mk-out/.mk-placing-PID` exists; a build that finds the marker of a process that
is gone (it was killed mid-write) removes the temp files it left.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from mk.cache.cas import ContentStore
from mk.cache.fsutil import atomic_writer
from mk.cache.local import process_alive
from mk.cache.stat_cache import FileDigest, StatCache
from mk.engine.errors import MkError
from mk.engine.placed import Placement, recording


def up_to_date(out_dir: Path, path: str, want: FileDigest, stats: StatCache) -> bool:
    """Whether `out_dir/path` already holds the blob `want` (asked of the stat cache)."""
    placed = f"{out_dir}/{path}"  # a string: this runs for every output
    if stats.holds(placed, want):
        return True
    try:
        return stats.digest(placed) == want
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False


_MARKER = ".mk-placing-"


def sweep_interrupted(out_dir: Path) -> None:
    """Remove the temp files of a build that was killed while it placed outputs."""
    try:
        names = os.listdir(out_dir)
    except OSError:
        return
    pids = {name: name.removeprefix(_MARKER) for name in names if name.startswith(_MARKER)}
    dead = [name for name, pid in pids.items() if pid.isdigit() and not process_alive(int(pid))]
    if not dead or len(dead) < len(pids):  # another build is placing now: its temp files are live
        return
    for temp in out_dir.rglob(".tmp-*"):
        with contextlib.suppress(OSError):
            temp.unlink()
    for name in dead:
        with contextlib.suppress(OSError):
            os.unlink(out_dir / name)


@contextlib.contextmanager
def placing(
    out_dir: Path, placement: Placement
) -> Iterator[Callable[[str, FileDigest, ContentStore, StatCache], None]]:
    """A `place` function for the files of `placement`; the marker exists from its first write to
    the end. Once they are placed, what their targets placed before and no longer make is removed
    (see `placed`)."""
    marker = out_dir / f"{_MARKER}{os.getpid()}"
    wrote = False

    def place_one(path: str, want: FileDigest, cas: ContentStore, stats: StatCache) -> None:
        nonlocal wrote
        if up_to_date(out_dir, path, want, stats):
            return
        if not wrote:
            out_dir.mkdir(parents=True, exist_ok=True)
            marker.touch()
            wrote = True
        _write(f"{out_dir}/{path}", want, cas, stats)

    try:
        with recording(out_dir, placement):
            yield place_one
    finally:
        if wrote:
            marker.unlink(missing_ok=True)


def _write(target: str, want: FileDigest, cas: ContentStore, stats: StatCache) -> None:
    try:
        with atomic_writer(Path(target), 0o755 if want.executable else 0o644, exchange=True) as out:
            cas.write_to(want.digest, None, out, plain_file=True)
    except IsADirectoryError:
        raise MkError(f"cannot place {target}: a directory is in the way; remove it (or run `mk clean`)") from None
    except NotADirectoryError:
        raise MkError(f"cannot place {target}: a file is in the way of one of its folders; remove it "
                      "(or run `mk clean`)") from None
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise MkError(f"cannot place {target}: the disk is full; nothing partial was kept") from None
    stats.record_written(target, want)
