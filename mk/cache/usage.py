"""How much disk the cache takes, counted as `du` counts it: the blocks each inode occupies, each
inode once (a toolchain's hard links are one file), folders included. A cache of many small
entries takes far more than the sum of their lengths, and a limit is about the disk."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Usage:
    files: int  # regular files (each name of a hard-linked file counts)
    size: int  # bytes on disk

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.files + other.files, self.size + other.size)


NOTHING = Usage(0, 0)


def on_disk(st: os.stat_result) -> int:
    return st.st_blocks * 512


class Meter:
    """Measures paths, counting an inode only the first time any of them reaches it."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()

    def usage(self, path: Path) -> Usage:
        """`path` and everything under it (symlinks are not followed); nothing if it is gone."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return NOTHING
        total = self._count(st)
        if stat.S_ISDIR(st.st_mode):
            for folder, dirs, files in os.walk(path):
                for name in (*dirs, *files):
                    try:
                        total += self._count(os.lstat(os.path.join(folder, name)))
                    except FileNotFoundError:  # removed meanwhile
                        continue
        return total

    def _count(self, st: os.stat_result) -> Usage:
        files = int(stat.S_ISREG(st.st_mode))
        if (st.st_dev, st.st_ino) in self._seen:
            return Usage(files, 0)
        self._seen.add((st.st_dev, st.st_ino))
        return Usage(files, on_disk(st))


def disk_usage(path: Path) -> Usage:
    return Meter().usage(path)
