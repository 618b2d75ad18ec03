"""Placing a file over an older one in mk-out: the new file is swapped in atomically (a reader
sees the old file or the new one, never none), the old one is removed, and what is in the way
and is not a file is still refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mk.cache.fsutil import _exchange, atomic_writer


def test_a_file_over_an_older_one_is_exchanged_and_the_old_one_removed(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    target.write_bytes(b"old" * 1000)
    old_inode = target.stat().st_ino
    with atomic_writer(target, 0o644, exchange=True) as out:
        out.write(b"new" * 2000)
    assert target.read_bytes() == b"new" * 2000
    assert target.stat().st_ino != old_inode
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["initrd.img"]  # no temp file left


def test_a_file_where_there_was_none_is_renamed_in(tmp_path: Path) -> None:
    target = tmp_path / "new.txt"
    with atomic_writer(target, 0o755, exchange=True) as out:
        out.write(b"made")
    assert target.read_bytes() == b"made" and target.stat().st_mode & 0o777 == 0o755


def test_exchange_declines_what_is_not_a_regular_file(tmp_path: Path) -> None:
    temp = tmp_path / ".tmp-x"
    temp.write_bytes(b"new")
    (tmp_path / "folder").mkdir()
    os.symlink("elsewhere", tmp_path / "link")
    assert not _exchange(str(temp), tmp_path / "folder")
    assert not _exchange(str(temp), tmp_path / "link")
    assert not _exchange(str(temp), tmp_path / "missing")
    assert temp.read_bytes() == b"new"


def test_a_directory_in_the_way_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError), atomic_writer(tmp_path / "out", 0o644, exchange=True) as out:
        out.write(b"x")
    assert (tmp_path / "out").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_exchange_swaps_in_the_new_file_and_removes_the_old(tmp_path: Path) -> None:
    temp, target = tmp_path / ".tmp-y", tmp_path / "y"
    temp.write_bytes(b"new")
    target.write_bytes(b"old")
    assert _exchange(str(temp), target)  # Linux with glibc: this machine's
    assert target.read_bytes() == b"new" and not temp.exists()
