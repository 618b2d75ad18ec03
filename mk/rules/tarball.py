"""Safe import of a tarball into a tree.

Nothing is ever unpacked onto disk: members are streamed into the content store and described by
tree entries. Members that would escape the tree are refused with an error naming them: absolute
paths, `..`, hard links to paths outside the archive, relative symlinks that climb above the
root, members under a symlink, and duplicates that disagree.
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree, TreeError, check_symlink, normalise

_IN_MEMORY = 16 << 20  # members up to this size are read whole rather than streamed


class UnsafeArchiveError(ValueError):
    pass


def import_tar(source: BinaryIO, cas: ContentStore, what: str) -> Tree:
    """Read a (possibly compressed) tar stream into a tree. `what` names it in errors."""
    entries: dict[str, Entry] = {}
    try:
        with tarfile.open(fileobj=source, mode="r|*") as archive:
            for member in archive:
                entry = _entry(member, archive, cas, entries, what)
                if entry is None:
                    continue
                previous = entries.get(entry.path)
                if previous is not None and previous != entry:
                    raise UnsafeArchiveError(f"{what}: member '{member.name}' appears twice with different contents")
                entries[entry.path] = entry
    except (tarfile.TarError, EOFError) as e:
        if isinstance(e, EOFError) or "unexpected end" in str(e) or "truncated" in str(e):
            raise UnsafeArchiveError(f"{what}: the archive is truncated ({e})") from None
        raise UnsafeArchiveError(f"{what}: not a readable tar archive ({e})") from None
    try:
        return Tree.build(entries.values())
    except TreeError as e:
        raise UnsafeArchiveError(f"{what}: {e}") from None


def _entry(
    member: tarfile.TarInfo, archive: tarfile.TarFile, cas: ContentStore, seen: dict[str, Entry], what: str
) -> Entry | None:
    try:
        if member.name.strip("./") == "" and member.isdir():
            return None  # the archive's own root, "./"
        path = normalise(member.name)
    except TreeError as e:
        raise UnsafeArchiveError(f"{what}: member '{member.name}': {e}") from None
    ancestor = path
    while "/" in ancestor:
        ancestor = ancestor.rsplit("/", 1)[0]
        if ancestor in seen and seen[ancestor].kind is Kind.SYMLINK:
            raise UnsafeArchiveError(f"{what}: member '{member.name}' lies under the symlink '{ancestor}'")
    mode, uid, gid = member.mode & 0o7777, member.uid, member.gid
    if member.isreg():
        data = archive.extractfile(member)
        assert data is not None
        if member.size <= _IN_MEMORY:
            # Hash first: a blob already in the store (the common case) is then not compressed again.
            content = data.read()
            digest, size = cas.put_bytes(content), len(content)
        else:
            digest, size = cas.put_stream(data)  # type: ignore[arg-type]
        if size != member.size:
            raise UnsafeArchiveError(f"{what}: member '{member.name}' is truncated")
        return Entry(path, Kind.FILE, mode, uid, gid, digest=digest, size=size)
    if member.isdir():
        return Entry(path, Kind.DIR, mode, uid, gid)
    if member.issym():
        try:
            check_symlink(path, member.linkname)
        except TreeError as e:
            raise UnsafeArchiveError(f"{what}: member '{member.name}': {e}") from None
        return Entry(path, Kind.SYMLINK, mode, uid, gid, target=member.linkname)
    if member.islnk():
        try:
            target = normalise(member.linkname)
        except TreeError as e:
            raise UnsafeArchiveError(f"{what}: hard link '{member.name}' -> '{member.linkname}': {e}") from None
        if seen.get(target) is None or seen[target].kind is not Kind.FILE:
            raise UnsafeArchiveError(
                f"{what}: hard link '{member.name}' points at '{member.linkname}', which is not an earlier file"
            )
        return Entry(path, Kind.HARDLINK, mode, uid, gid, target=target)
    if member.ischr() or member.isblk():
        kind = Kind.CHAR if member.ischr() else Kind.BLOCK
        return Entry(path, kind, mode, uid, gid, major=member.devmajor, minor=member.devminor)
    if member.isfifo():
        return Entry(path, Kind.FIFO, mode, uid, gid)
    raise UnsafeArchiveError(f"{what}: member '{member.name}' has an unsupported type")
