"""A tree as a cpio "newc" archive, the format the Linux kernel unpacks as an initramfs."""

from __future__ import annotations

import stat
from typing import BinaryIO

from mk.cache.cas import ContentStore
from mk.cache.tree import Kind, Tree

_MODE_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.HARDLINK: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.CHAR: stat.S_IFCHR,
    Kind.BLOCK: stat.S_IFBLK,
    Kind.FIFO: stat.S_IFIFO,
}
# Every newc header field is 8 hex digits; these name them in errors, in header order.
_FIELDS = ("inode", "mode", "uid", "gid", "link count", "mtime (source_date_epoch)", "file size", "devmajor",
           "devminor", "device major", "device minor", "path length", "check")
_FIELD_MAX = 0xFFFFFFFF


class FieldOverflowError(ValueError):
    """A number the newc format cannot hold: it would silently overflow into the next field."""


def _header(ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, size: int,
            rdev: tuple[int, int], name: bytes) -> bytes:
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    if max(fields) > _FIELD_MAX:
        field, value = next((f, v) for f, v in zip(_FIELDS, fields, strict=True) if v > _FIELD_MAX)
        raise FieldOverflowError(f"cpio: '{name.decode(errors='replace')}': {field} {value} does not fit the newc "
                                 f"header (at most {_FIELD_MAX})")
    header = b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\0"
    return header + b"\0" * (-len(header) % 4)


TRAILER = _header(0, 0, 0, 0, 1, 0, 0, (0, 0), b"TRAILER!!!")  # the entry that ends an archive


def write_cpio(tree: Tree, cas: ContentStore, out: BinaryIO, mtime: int, plain_file: bool = False) -> None:
    """Inode numbers are assigned in path order; a hard link shares its file's inode. With
    `plain_file`, contents go to `out`'s descriptor directly (see ContentStore.write_to).

    The content of a hard-linked file is written with its first name and later names carry none,
    which is what the kernel's initramfs unpacker expects.
    """
    links: dict[str, int] = {}
    for entry in tree.entries:
        if entry.kind is Kind.HARDLINK:
            links[entry.target] = links.get(entry.target, 1) + 1
    inodes: dict[str, int] = {}
    for number, entry in enumerate(tree.entries, start=1):
        name = entry.path.encode()
        mode = _MODE_BITS[entry.kind] | entry.mode
        rdev = (entry.major, entry.minor)
        if entry.kind is Kind.HARDLINK:
            ino = inodes[entry.target]
            out.write(_header(ino, mode, entry.uid, entry.gid, links[entry.target], mtime, 0, rdev, name))
            continue
        inodes[entry.path] = number
        nlink = 2 if entry.kind is Kind.DIR else links.get(entry.path, 1)
        if entry.kind is Kind.FILE:
            out.write(_header(number, mode, entry.uid, entry.gid, nlink, mtime, entry.size, rdev, name))
            if entry.size:
                cas.write_to(entry.digest, entry.size, out, plain_file)
            out.write(b"\0" * (-entry.size % 4))
        elif entry.kind is Kind.SYMLINK:
            target = entry.target.encode()
            out.write(_header(number, mode, entry.uid, entry.gid, nlink, mtime, len(target), rdev, name))
            out.write(target + b"\0" * (-len(target) % 4))
        else:
            out.write(_header(number, mode, entry.uid, entry.gid, nlink, mtime, 0, rdev, name))
    out.write(TRAILER)
