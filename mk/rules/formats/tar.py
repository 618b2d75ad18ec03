"""A tree as a POSIX pax tar stream: sorted, owners by number only, every mtime the same.

The bytes are those of `tarfile` in stream mode (`w|`, pax), which tests/test_archives.py holds
this writer to; it writes them itself so that file contents can go from the content store to an
uncompressed archive in the kernel.
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree

_TYPES = {
    Kind.FILE: tarfile.REGTYPE,
    Kind.DIR: tarfile.DIRTYPE,
    Kind.SYMLINK: tarfile.SYMTYPE,
    Kind.HARDLINK: tarfile.LNKTYPE,
    Kind.CHAR: tarfile.CHRTYPE,
    Kind.BLOCK: tarfile.BLKTYPE,
    Kind.FIFO: tarfile.FIFOTYPE,
}
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_ZEROS = bytes(_RECORD)
_FIELD = 100  # ustar's name and link name, in bytes
_ID_LIMIT, _NUMBER_LIMIT = 8**7, 8**11  # what ustar's 8- and 12-byte octal fields hold


def tar_info(entry: Entry, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.type = _TYPES[entry.kind]
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mtime = mtime
    info.size = entry.size if entry.kind is Kind.FILE else 0
    info.linkname = entry.target
    info.devmajor, info.devminor = entry.major, entry.minor
    return info


def _header(entry: Entry, mtime: int) -> bytes:
    """The entry's header as tarfile writes it in pax format. Most entries need no pax record, and
    for them this builds the plain ustar block tarfile would, at a fraction of the cost (it runs
    once per file of the tree); the rest go through tarfile."""
    name = entry.path + "/" if entry.kind is Kind.DIR else entry.path
    size = entry.size if entry.kind is Kind.FILE else 0
    if not (name.isascii() and entry.target.isascii() and len(name) <= _FIELD and len(entry.target) <= _FIELD
            and entry.uid < _ID_LIMIT and entry.gid < _ID_LIMIT and size < _NUMBER_LIMIT
            and 0 <= mtime < _NUMBER_LIMIT):
        return tar_info(entry, mtime).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    devices = b"%07o\0%07o\0" % (entry.major, entry.minor) if entry.kind in (Kind.CHAR, Kind.BLOCK) else bytes(16)
    block = b"".join((
        name.encode().ljust(_FIELD, b"\0"),
        b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (entry.mode, entry.uid, entry.gid, size, mtime),
        b" " * 8,  # the checksum, counted as spaces
        _TYPES[entry.kind],
        entry.target.encode().ljust(_FIELD, b"\0"),
        tarfile.POSIX_MAGIC,
        bytes(64),  # owner and group names: empty
        devices,
        bytes(167),  # the path prefix (unused) and the block's padding
    ))
    checksum = 256 + sum(block[:148]) + sum(block[156:])
    return block[:148] + b"%06o\0" % checksum + block[155:]


def write_tar(tree: Tree, cas: ContentStore, out: BinaryIO, mtime: int, plain_file: bool = False) -> None:
    """Stream `tree` as tar into `out`; file contents come straight from the content store (in the
    kernel when `plain_file` says `out` is a file written directly, see ContentStore.write_to)."""
    offset = 0
    for entry in tree.entries:
        header = _header(entry, mtime)
        out.write(header)
        offset += len(header)
        if entry.kind is Kind.FILE and entry.size:
            cas.write_to(entry.digest, entry.size, out, plain_file)
            padding = -entry.size % _BLOCK
            out.write(_ZEROS[:padding])
            offset += entry.size + padding
    # The end: two zero blocks, then zeros up to a whole record (as tarfile and GNU tar's -b20).
    offset += 2 * _BLOCK
    out.write(_ZEROS[: 2 * _BLOCK + (-offset % _RECORD)])
