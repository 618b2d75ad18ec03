"""A tree for people: one line per entry, as `tar tvf` shows an archive.

    lrwxrwxrwx 0/0         0 -            /bin -> usr/bin
    crw-rw-rw- 0/0       1,3 -            /dev/null
    -rw-r--r-- 0/0         6 8e4c7c1b99db /etc/motd
    hrwxr-xr-x 0/0         0 -            /usr/bin/sh link to /usr/bin/busybox
    drwxr-xr-x 100/65534   0 -            /var/empty

Mode, owner uid/gid, size (a device's major,minor), the first 12 hex digits of a file's content
digest, and the path as it is in the image. Columns are as wide as the widest value shown.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence

from mk.cache.tree import Entry, Kind, Tree

SHORT_DIGEST = 12
_TYPE_BITS = {Kind.FILE: stat.S_IFREG, Kind.HARDLINK: stat.S_IFREG, Kind.DIR: stat.S_IFDIR,
              Kind.SYMLINK: stat.S_IFLNK, Kind.CHAR: stat.S_IFCHR, Kind.BLOCK: stat.S_IFBLK, Kind.FIFO: stat.S_IFIFO}


def mode_string(entry: Entry) -> str:
    """'drwxr-xr-x', '-rwsr-xr-x', ...; a hard link is 'h', as tar shows it."""
    text = stat.filemode(_TYPE_BITS[entry.kind] | entry.mode)
    return "h" + text[1:] if entry.kind is Kind.HARDLINK else text


def shown_path(path: str) -> str:
    return "/" + path


def size_field(entry: Entry) -> str:
    if entry.kind in (Kind.CHAR, Kind.BLOCK):
        return f"{entry.major},{entry.minor}"
    return str(entry.size)


def short_digest(digest: str) -> str:
    return digest[:SHORT_DIGEST] or "-"


def _fields(entry: Entry) -> tuple[str, str, str, str, str]:
    name = shown_path(entry.path)
    if entry.kind is Kind.SYMLINK:
        name += f" -> {entry.target}"
    elif entry.kind is Kind.HARDLINK:
        name += f" link to {shown_path(entry.target)}"
    return mode_string(entry), f"{entry.uid}/{entry.gid}", size_field(entry), short_digest(entry.digest), name


def lines(entries: Sequence[Entry]) -> list[str]:
    """One aligned line per entry."""
    rows = [_fields(e) for e in entries]
    owner = max((len(r[1]) for r in rows), default=0)
    size = max((len(r[2]) for r in rows), default=0)
    return [f"{mode} {uid_gid:<{owner}} {bytes_:>{size}} {digest:<{SHORT_DIGEST}} {name}"
            for mode, uid_gid, bytes_, digest, name in rows]


def under(tree: Tree, path: str) -> list[Entry]:
    """The entry at `path` (a normalised tree path) and everything below it."""
    below = path + "/"
    return [e for e in tree.entries if e.path == path or e.path.startswith(below)]
