"""A tree as a POSIX pax tar stream: sorted, owners by number only, every mtime the same."""

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


def write_tar(tree: Tree, cas: ContentStore, out: BinaryIO, mtime: int) -> None:
    """Stream `tree` as tar into `out`; file contents come straight from the content store."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for entry in tree.entries:
            info = tar_info(entry, mtime)
            if entry.kind is Kind.FILE:
                # tarfile reads exactly `size` bytes; the reader verifies the blob before the last.
                with cas.open(entry.digest, entry.size) as blob:
                    archive.addfile(info, blob)
            else:
                archive.addfile(info)
