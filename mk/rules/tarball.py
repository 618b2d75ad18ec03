"""Safe import of a tarball into a tree.

Nothing is ever unpacked onto disk: members are streamed into the content store and described by
tree entries. Members that would escape the tree are refused with an error naming them: absolute
paths, `..`, hard links to paths outside the archive, relative symlinks that climb above the
root, members under a symlink, and duplicates that disagree. So is an archive that is not whole:
cut short (at a block boundary too: it must reach its end-of-archive marker), compressed data
that is corrupt or ends early, and extended headers too large to hold in memory.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree, TreeError, check_symlink, normalise, shown
from mk.rules.formats.compression import CorruptStreamError, Readable, TruncatedStreamError, decompressed

_IN_MEMORY = 16 << 20  # members up to this size are read whole rather than streamed
_CHUNK = 1 << 20
# tarfile reads a pax or GNU long-name header whole before the member it describes; real ones
# hold a few paths and attributes.
_MAX_EXTENDED_HEADER = 1 << 20
_EXTENDED = {tarfile.XHDTYPE: "pax", tarfile.SOLARIS_XHDTYPE: "pax", tarfile.XGLTYPE: "pax global",
             tarfile.GNUTYPE_LONGNAME: "GNU long name", tarfile.GNUTYPE_LONGLINK: "GNU long link"}


class UnsafeArchiveError(ValueError):
    pass


class _Refused(Exception):
    """Raised from inside tarfile's header parsing; `read_tar` adds which archive."""


class _Header(tarfile.TarInfo):
    """tarfile's header, refusing what tarfile would quietly take for the end of the archive (a
    corrupt header) or read whole into memory (a huge extended header)."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _Header:
        try:
            header = super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as e:
            if len(buf) == tarfile.BLOCKSIZE and any(buf):  # a whole block, not the zero block that ends
                raise _Refused(f"not a readable tar archive ({e})") from None
            raise
        what = _EXTENDED.get(header.type)
        if what is not None and header.size > _MAX_EXTENDED_HEADER:
            raise _Refused(f"member '{shown(header.name)}': its {what} header is {header.size} bytes, "
                           f"more than the {_MAX_EXTENDED_HEADER} mk accepts")
        return header


def read_tar(source: Readable, what: str, visit: Callable[[tarfile.TarInfo, tarfile.TarFile], None]) -> None:
    """Call `visit` on each member of a tar stream, compressed or not (the magic number says), then
    make sure the archive and its compression both ended where they should.

    Raises UnsafeArchiveError naming `what` for an archive that is not whole.
    """
    try:
        plain = decompressed(source)
        with tarfile.open(fileobj=plain, mode="r|", tarinfo=_Header) as archive:
            last = ""
            for member in archive:
                visit(member, archive)
                last = member.name
            # tarfile stops quietly wherever its input does. Only the end-of-archive marker, a
            # zero block, is read whole where the next header would be.
            if archive.fileobj.tell() - archive.offset != tarfile.BLOCKSIZE:
                after = f" after member '{shown(last)}'" if last else ""
                raise UnsafeArchiveError(f"{what}: the archive is truncated: it ends{after} without the "
                                         "end-of-archive marker")
        while plain.read(_CHUNK):  # to the end of the compressed stream, which checks it was whole
            pass
    except TruncatedStreamError as e:
        raise UnsafeArchiveError(f"{what}: the archive is truncated ({e})") from None
    except (CorruptStreamError, _Refused) as e:
        raise UnsafeArchiveError(f"{what}: {e}") from None
    except tarfile.TarError as e:
        if "unexpected end" in str(e) or "truncated" in str(e):
            raise UnsafeArchiveError(f"{what}: the archive is truncated ({e})") from None
        raise UnsafeArchiveError(f"{what}: not a readable tar archive ({e})") from None


def import_tar(source: Readable, cas: ContentStore, what: str) -> Tree:
    """Read a (possibly compressed) tar stream into a tree. `what` names it in errors."""
    entries: dict[str, Entry] = {}

    def add(member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        entry = _entry(member, archive, cas, entries, what)
        if entry is None:
            return
        previous = entries.get(entry.path)
        if previous is not None and previous != entry:
            raise UnsafeArchiveError(f"{what}: member '{shown(member.name)}' appears twice with different contents")
        entries[entry.path] = entry

    read_tar(source, what, add)
    try:
        return Tree.build(entries.values())
    except TreeError as e:
        raise UnsafeArchiveError(f"{what}: {e}") from None


def _entry(
    member: tarfile.TarInfo, archive: tarfile.TarFile, cas: ContentStore, seen: dict[str, Entry], what: str
) -> Entry | None:
    name = shown(member.name)
    try:
        if member.name.strip("./") == "" and member.isdir():
            return None  # the archive's own root, "./"
        path = normalise(member.name)
    except TreeError as e:
        raise UnsafeArchiveError(f"{what}: member '{name}': {e}") from None
    ancestor = path
    while "/" in ancestor:
        ancestor = ancestor.rsplit("/", 1)[0]
        if ancestor in seen and seen[ancestor].kind is Kind.SYMLINK:
            raise UnsafeArchiveError(f"{what}: member '{name}' lies under the symlink '{shown(ancestor)}'")
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
            raise UnsafeArchiveError(f"{what}: member '{name}' is truncated")
        return Entry(path, Kind.FILE, mode, uid, gid, digest=digest, size=size)
    if member.isdir():
        return Entry(path, Kind.DIR, mode, uid, gid)
    if member.issym():
        try:
            check_symlink(path, member.linkname)
        except TreeError as e:
            raise UnsafeArchiveError(f"{what}: member '{name}': {e}") from None
        return Entry(path, Kind.SYMLINK, mode, uid, gid, target=member.linkname)
    if member.islnk():
        link = shown(member.linkname)
        try:
            target = normalise(member.linkname)
        except TreeError as e:
            raise UnsafeArchiveError(f"{what}: hard link '{name}' -> '{link}': {e}") from None
        if seen.get(target) is None or seen[target].kind is not Kind.FILE:
            raise UnsafeArchiveError(f"{what}: hard link '{name}' points at '{link}', which is not an earlier file")
        return Entry(path, Kind.HARDLINK, mode, uid, gid, target=target)
    if member.ischr() or member.isblk():
        kind = Kind.CHAR if member.ischr() else Kind.BLOCK
        return Entry(path, kind, mode, uid, gid, major=member.devmajor, minor=member.devminor)
    if member.isfifo():
        return Entry(path, Kind.FIFO, mode, uid, gid)
    raise UnsafeArchiveError(f"{what}: member '{name}' has an unsupported type")
