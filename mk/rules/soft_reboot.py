"""What `mk watch --run` sends a running VM's soft-reboot agent (see mk/rules/init.py): the
difference between the initrd the VM unpacked and the new one, as the paths to remove and a newc
cpio of the entries to write; and whether that difference may stand for a full reboot.

Both initrds are read as the kernel reads them: concatenated newc archives (an entry of a later
one replaces an earlier one's), hard links grouped by inode number within one archive.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mk.cache.cas import digest_file
from mk.rules.formats.cpio import TRAILER
from mk.rules.init import UPDATE_BLOCK

_MAGIC = b"070701"
_HEADER = 110  # the magic and 13 fields of 8 hex digits
_TRAILER = "TRAILER!!!"
# What belongs to the kernel side: a change there needs the kernel booted again.
_KERNEL_PATHS = ("lib/modules/", "usr/lib/modules/", "etc/mk/modules.load")


class ArchiveError(ValueError):
    """An initrd that is not a sequence of newc archives."""


@dataclass(frozen=True)
class Entry:
    """One path of an initrd, as its last archive entry left it."""

    meta: tuple[int, ...]  # mode, uid, gid, link count, mtime, size, device major, device minor
    digest: bytes  # of the data (a file's bytes, a symlink's target)
    start: int  # where its raw entry (header, name, data) is in the archive file
    end: int
    group: str  # the first path of its hard-link group ("" when it has none)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.meta[0])

    def same(self, other: Entry) -> bool:
        return (self.meta, self.digest, self.group) == (other.meta, other.digest, other.group)


def read_index(path: Path) -> dict[str, Entry]:
    """Every path of the uncompressed initrd at `path`, in the order of its last entry."""
    entries: dict[str, Entry] = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos, archive = 0, 0
        groups: dict[tuple[int, int], str] = {}
        while pos < len(data):
            if data[pos] == 0:  # padding between archives, or after the last
                found = data.find(_MAGIC, pos)
                if any(data[pos:found if found >= 0 else len(data)]):
                    raise ArchiveError(f"{path}: bytes that are neither padding nor an archive at byte {pos}")
                if found < 0:
                    break
                pos = found
            if data[pos:pos + 6] != _MAGIC or pos + _HEADER > len(data):
                raise ArchiveError(f"{path}: no newc header at byte {pos}")
            fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
            ino, mode, uid, gid, nlink, mtime, size = fields[:7]
            name_size = fields[11]
            name = data[pos + _HEADER:pos + _HEADER + name_size - 1].decode("utf-8", "surrogateescape")
            body = pos + _HEADER + name_size
            body += -body % 4
            end = body + size
            end += -end % 4
            if name == _TRAILER:
                archive += 1
            else:
                group = ""
                if nlink > 1 and not stat.S_ISDIR(mode):
                    group = groups.setdefault((archive, ino), name)
                digest = hashlib.sha256(data[body:body + size]).digest()
                entries.pop(name, None)  # a later entry's place is its own
                entries[name] = Entry((mode, uid, gid, nlink, mtime, size, fields[9], fields[10]), digest,
                                      pos, end, group)
            pos = end
    return entries


@dataclass(frozen=True)
class Update:
    removed: tuple[str, ...]  # paths to delete first
    written: tuple[str, ...]  # the archive's entries, in its order
    archive: bytes  # a newc cpio of them

    def payload(self) -> tuple[bytes, int, int]:
        """The update drive's bytes: the removed paths, then the archive, each padded to whole
        blocks; and the two lengths in blocks."""
        listing = "".join(f"{path}\n" for path in self.removed).encode("utf-8", "surrogateescape")
        listing += b"\n" * (-len(listing) % UPDATE_BLOCK)
        archive = self.archive + b"\0" * (-len(self.archive) % UPDATE_BLOCK)
        return listing + archive, len(listing) // UPDATE_BLOCK, len(archive) // UPDATE_BLOCK


def difference(old: Mapping[str, Entry], new: Mapping[str, Entry], new_archive: Path) -> Update:
    """What turns the tree `old` describes into the one `new` does, whose entries are in
    `new_archive`. A path whose type changed is removed, then written."""
    removed = [path for path, entry in old.items()
               if path not in new or stat.S_IFMT(entry.meta[0]) != stat.S_IFMT(new[path].meta[0])]
    changed = {path for path, entry in new.items() if path not in old or not old[path].same(entry)}
    # A changed member of a hard-link group is written with all its group, the first (with the data) first.
    groups = {new[path].group for path in changed if new[path].group}
    changed |= {path for path, entry in new.items() if entry.group in groups}
    # A folder whose entries changed gets its mtime back from its entry, written after them.
    changed |= {parent for path in [*changed, *removed] if (parent := str(PurePosixPath(path).parent)) in new}
    files = [path for path in new if path in changed and not new[path].is_dir]
    folders = sorted((path for path in changed if new[path].is_dir), key=lambda p: (-p.count("/"), p))
    written = files + folders
    return Update(tuple(sorted(removed)), tuple(written), _archive(new, written, new_archive))


def _archive(new: Mapping[str, Entry], written: Iterable[str], source: Path) -> bytes:
    """The entries' raw bytes from `source`, renumbered: inode numbers from another archive of
    the initrd could meet here."""
    parts: list[bytes] = []
    inodes: dict[str, int] = {}
    with open(source, "rb") as f:
        for path in written:
            entry = new[path]
            f.seek(entry.start)
            raw = f.read(entry.end - entry.start)
            ino = inodes.setdefault(entry.group or path, len(inodes) + 1)
            parts.append(raw[:6] + b"%08X" % ino + raw[14:])
    parts.append(TRAILER)
    return b"".join(parts)


@dataclass
class Booted:
    """What a VM booted, which the next image is compared with."""

    kernel: str  # its digest
    cmdline: str
    initrd: Path  # uncompressed
    entries: dict[str, Entry]

    @staticmethod
    def of(kernel: Path, cmdline: Path, initrd: Path) -> Booted:
        return Booted(digest_file(kernel), cmdline.read_text(encoding="utf-8"), initrd, read_index(initrd))

    def kernel_change(self, kernel: Path, cmdline: Path) -> str | None:
        """Why the image at `kernel` and `cmdline` needs the kernel booted again, if it does."""
        if digest_file(kernel) != self.kernel:
            return "the kernel changed"
        if cmdline.read_text(encoding="utf-8") != self.cmdline:
            return "the kernel command line changed"
        return None

    def update(self, initrd: Path) -> tuple[Update, dict[str, Entry]] | str:
        """The update to the uncompressed `initrd` and its entries; or why it needs the kernel
        booted again (its modules changed)."""
        entries = read_index(initrd)
        update = difference(self.entries, entries, initrd)
        touched = (*update.removed, *update.written)
        if (path := next((p for p in touched if p.startswith(_KERNEL_PATHS)), None)) is not None:
            return f"the kernel's modules changed (/{path})"
        return update, entries

    def now(self, initrd: Path, entries: dict[str, Entry]) -> None:
        """The VM runs the image of `initrd` (which takes the booted one's place) now."""
        os.replace(initrd, self.initrd)
        self.entries = entries
