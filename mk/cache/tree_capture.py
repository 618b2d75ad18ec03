"""A folder a command filled, read into a tree: how a command's tree output is stored.

Files go into the content store; the tree keeps each entry's kind and permission bits, owned by
root (a sandbox cannot make anything else). Modification times are not kept, so the tree depends
only on what the command wrote. Files sharing an inode become one file and hard links to it (the
first path met, folders walked in name order, is the file). What a tree cannot hold safely is refused, naming the
path: a symlink that climbs out of the folder, a socket, a device or a fifo (a sandbox cannot
make the last two; a build that wants them declares them in a layer).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree, TreeError, check_symlink, shown


def capture(folder: Path, cas: ContentStore) -> Tree:
    """The tree of everything under `folder` (not the folder itself). Raises TreeError."""
    entries: list[Entry] = []
    first_of_inode: dict[tuple[int, int], str] = {}
    for path in _walk(folder, ""):
        full = folder / path
        st = os.lstat(full)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(path, Kind.DIR, mode))
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(full)
            check_symlink(path, target)
            entries.append(Entry(path, Kind.SYMLINK, 0o777, target=target))
        elif stat.S_ISREG(st.st_mode):
            inode = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and inode in first_of_inode:
                entries.append(Entry(path, Kind.HARDLINK, mode, target=first_of_inode[inode]))
                continue
            first_of_inode[inode] = path
            entries.append(Entry(path, Kind.FILE, mode, digest=cas.put_file(full), size=st.st_size))
        else:
            raise TreeError(f"'{shown(path)}' is neither a file, a folder nor a symlink, all a tree output holds")
    return Tree.build(entries)


def _walk(folder: Path, prefix: str) -> list[str]:
    """Paths under `folder`, relative to the captured root, each folder before what it holds."""
    found: list[str] = []
    with os.scandir(folder) as listing:
        children = sorted(listing, key=lambda e: e.name)
    for child in children:
        path = f"{prefix}{child.name}"
        found.append(path)
        if child.is_dir(follow_symlinks=False):
            found += _walk(Path(child.path), path + "/")
    return found
