"""Places built files under `mk-out/` at the workspace root, for people and other tools."""

from __future__ import annotations

import errno
from pathlib import Path

from mk.cache.cas import ContentStore
from mk.cache.fsutil import atomic_writer
from mk.cache.stat_cache import FileDigest, StatCache
from mk.engine.errors import MkError


def up_to_date(out_dir: Path, path: str, want: FileDigest, stats: StatCache) -> bool:
    """Whether `out_dir/path` already holds the blob `want` (asked of the stat cache)."""
    try:
        return stats.digest(f"{out_dir}/{path}") == want  # a string: this runs for every output
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False


def place(out_dir: Path, path: str, want: FileDigest, cas: ContentStore, stats: StatCache) -> None:
    """Make `out_dir/path` hold the blob `want`; a file already up to date is left untouched."""
    if up_to_date(out_dir, path, want, stats):
        return
    target = f"{out_dir}/{path}"
    try:
        with atomic_writer(Path(target), 0o755 if want.executable else 0o644) as out:
            cas.copy_to(want.digest, out)
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
