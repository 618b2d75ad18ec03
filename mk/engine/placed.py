"""What each target placed in mk-out, so that a build removes the files its targets no longer make.

`mk-out/.mk-placed` maps each target's label to the files the last build of it placed. Once a
build has built a target, every file the record lists for it that this build did not place is
stale, and is removed unless another target's entry still lists it: the target's files in
mk-out are then exactly what this build made. Targets the build did not build keep their files.
So does a target a failure left unfinished: what of it was made is placed over its old files.

The record begins with a stamp, the digest of the placement that last wrote it. A build whose
placement has that stamp (every no-op build) learns from those 32 bytes that there is nothing to
remove, and reads no further. A build that changes the record holds a lock on mk-out (flock on
the folder) from before it places anything until it has recorded, so two builds never lose each
other's entries or remove a file the other has just placed and not yet recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import blake3
import msgpack

from mk.cache.fsutil import write_atomic
from mk.cache.seal import SEAL_BYTES, seal, unseal

RECORD = ".mk-placed"
_NO_STAMP = b"\0" * SEAL_BYTES  # no placement digests to this: a record with it is always read

Files = tuple[str, ...]


@dataclass(frozen=True)
class Placement:
    """The files a build places for each requested target (source files are not placed)."""

    built: tuple[tuple[str, Files], ...]  # label -> every file of the target, placed
    partial: tuple[tuple[str, Files], ...] = ()  # label -> the files made of a target a failure left unfinished
    stamp: bytes = _NO_STAMP

    @staticmethod
    def of(targets: Iterable[tuple[str, Files]]) -> Placement:
        built = tuple(targets)
        return Placement(built, (), blake3.blake3(msgpack.packb(built)).digest())

    def given(self, produced: Collection[str]) -> Placement:
        """This placement once a failure left only `produced` made."""
        built = tuple((label, files) for label, files in self.built if all(f in produced for f in files))
        partial = tuple((label, tuple(f for f in files if f in produced)) for label, files in self.built
                        if not all(f in produced for f in files))
        return Placement(built, partial) if partial else self

    @property
    def places_anything(self) -> bool:
        return any(files for _, files in (*self.built, *self.partial))


def read_record(file: Path) -> dict[str, Files]:
    """The record's entries: none if it is missing or damaged (then nothing is taken for stale)."""
    try:
        data = file.read_bytes()
    except OSError:
        return {}
    payload = unseal(data[SEAL_BYTES:])
    try:
        entries = msgpack.unpackb(payload) if payload is not None else None
    except (ValueError, msgpack.UnpackException):
        entries = None
    if not isinstance(entries, dict):
        return {}
    return {str(label): tuple(str(p) for p in paths) for label, paths in entries.items() if isinstance(paths, list)}


def write_record(file: Path, stamp: bytes, entries: Mapping[str, Files]) -> None:
    payload = msgpack.packb({label: list(entries[label]) for label in sorted(entries)})
    assert len(stamp) == SEAL_BYTES
    write_atomic(file, stamp + seal(payload))


def _stamp(file: Path) -> bytes | None:
    try:
        with open(file, "rb") as f:
            return f.read(SEAL_BYTES)
    except OSError:
        return None


@contextlib.contextmanager
def recording(out_dir: Path, placement: Placement) -> Iterator[None]:
    """Around placing `placement`: afterwards, record it and remove what became stale.

    Nothing is recorded if placing fails (the record then still lists the old files, which the
    next build that builds their targets removes)."""
    record = out_dir / RECORD
    if _stamp(record) == placement.stamp or not (placement.places_anything or record.exists()):
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        yield
        entries = read_record(record)
        before = {label: entries.get(label, ()) for label, _ in placement.built}
        entries.update(placement.built)
        for label, made in placement.partial:
            entries[label] = tuple(dict.fromkeys((*entries.get(label, ()), *made)))
        still_placed = {path for files in entries.values() for path in files}
        for path in sorted({p for files in before.values() for p in files} - still_placed):
            _remove(out_dir, path)
        write_record(record, placement.stamp, entries)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _remove(out_dir: Path, path: str) -> None:
    """Remove a stale file, and the folders it leaves empty; a path that does not lead to a file
    inside mk-out (the record was edited, or a folder became a symlink) is left alone."""
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") or "\0" in p for p in parts):
        return
    root = os.path.realpath(out_dir)
    target = os.path.join(root, path)
    if os.path.realpath(os.path.dirname(target)) != os.path.dirname(target):
        return  # some folder on the way is a symlink
    try:
        os.unlink(target)
    except (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError):
        return
    folder = os.path.dirname(target)
    while folder != root:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (or already gone)
            return
        folder = os.path.dirname(folder)
