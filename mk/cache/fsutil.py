"""Atomic file writes: a reader never sees a half-written file, whatever happens to the writer."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a temp file beside `path`; rename it into place only if the block succeeds."""
    import tempfile  # imports shutil: a no-op build writes nothing and never needs it

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


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    with atomic_writer(path, mode) as out:
        out.write(data)
