"""How the content store keeps blobs: large and incompressible ones as they are, the rest zstd with
its checksum; readers that trust the store still catch a cut or bent blob."""

from __future__ import annotations

import io
import os
import random
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import zstandard

from mk.cache.cas import RAW_FROM, ZSTD_MAGIC, ContentStore, CorruptBlobError, digest_bytes, digest_file
from mk.cache.tree import Entry, Kind, Tree
from mk.rules.formats.cpio import write_cpio
from mk.rules.formats.tar import tar_info, write_tar

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

LARGE = random.Random(1).randbytes(RAW_FROM + 12345)
# Hashed mapped, a window at a time, and on every core: from 16 MiB (cas._THREADED_HASH).
HUGE = random.Random(9).randbytes((16 << 20) * 2 + 4321)
INCOMPRESSIBLE = random.Random(2).randbytes(10_000)
COMPRESSIBLE = b"the same line again and again\n" * 500


def _stored(cas: ContentStore, digest: str) -> bytes:
    return cas.path(digest).read_bytes()


def _put_bytes(cas: ContentStore, data: bytes, tmp_path: Path) -> str:
    return cas.put_bytes(data)


def _put_file(cas: ContentStore, data: bytes, tmp_path: Path) -> str:
    source = tmp_path / "source"
    source.write_bytes(data)
    return cas.put_file(source)


def _put_stream(cas: ContentStore, data: bytes, tmp_path: Path) -> str:
    digest, size = cas.put_stream(io.BytesIO(data))
    assert size == len(data)
    return digest


PUTS: dict[str, Callable[[ContentStore, bytes, Path], str]] = {
    "put_bytes": _put_bytes, "put_file": _put_file, "put_stream": _put_stream,
}


@pytest.mark.parametrize("put", PUTS)
def test_a_large_blob_is_stored_as_it_is_and_reads_back(put: str, tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    digest = PUTS[put](cas, LARGE, tmp_path)
    assert digest == digest_bytes(LARGE)
    assert _stored(cas, digest) == LARGE
    assert cas.read_bytes(digest) == LARGE
    assert cas.verify(digest)
    out = io.BytesIO()
    cas.write_to(digest, len(LARGE), out)
    assert out.getvalue() == LARGE


@pytest.mark.parametrize("put", ["put_bytes", "put_file"])
def test_a_small_blob_that_does_not_compress_is_stored_as_it_is(put: str, tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    digest = PUTS[put](cas, INCOMPRESSIBLE, tmp_path)
    assert _stored(cas, digest) == INCOMPRESSIBLE
    assert cas.read_bytes(digest) == INCOMPRESSIBLE


@pytest.mark.parametrize("put", PUTS)
def test_a_compressible_small_blob_is_stored_compressed_with_zstd_checksum(put: str, tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    digest = PUTS[put](cas, COMPRESSIBLE, tmp_path)
    stored = _stored(cas, digest)
    assert stored.startswith(ZSTD_MAGIC) and len(stored) < len(COMPRESSIBLE) // 10
    assert zstandard.get_frame_parameters(stored[:18]).has_checksum
    out = io.BytesIO()
    cas.write_to(digest, len(COMPRESSIBLE), out)
    assert out.getvalue() == COMPRESSIBLE


SKIPPABLE = b"\x50\x2a\x4d\x18"  # a zstd skippable frame's magic number


@pytest.mark.parametrize("put", PUTS)
@pytest.mark.parametrize("data", [ZSTD_MAGIC + LARGE, SKIPPABLE + bytes(4) + LARGE, ZSTD_MAGIC + INCOMPRESSIBLE,
                                  ZSTD_MAGIC],
                         ids=["zstd-large", "skippable-large", "zstd-incompressible", "the-magic-alone"])
def test_a_blob_that_begins_with_a_zstd_magic_number_reads_back_as_itself(put: str, data: bytes,
                                                                          tmp_path: Path) -> None:
    """A compressed archive kept as it is goes after an empty skippable frame, so it is not read as
    a compressed blob (nor as one after such a frame)."""
    cas = ContentStore(tmp_path / "cache")
    digest = PUTS[put](cas, data, tmp_path)
    stored = _stored(cas, digest)
    assert stored != data
    if len(data) >= RAW_FROM:
        assert stored == SKIPPABLE + bytes(4) + data
    assert cas.read_bytes(digest) == data
    for plain_file in (False, True):
        with open(tmp_path / "out", "wb") as out:
            cas.write_to(digest, len(data), out, plain_file)
        assert (tmp_path / "out").read_bytes() == data
        with open(tmp_path / "placed", "wb") as out:
            cas.write_to(digest, None, out, plain_file)
        assert (tmp_path / "placed").read_bytes() == data
    with cas.compressed(digest) as (body, size):
        assert zstandard.ZstdDecompressor().stream_reader(body).read() == data and size == len(data)
    assert not cas.link_to(digest, tmp_path / "linked")


def test_an_output_that_needs_the_header_is_copied_in_not_linked(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    output = tmp_path / "output.zst"
    output.write_bytes(ZSTD_MAGIC + LARGE)
    digest = cas.put_file(output, owned=True)
    assert os.stat(cas.path(digest)).st_ino != os.stat(output).st_ino
    assert output.read_bytes() == ZSTD_MAGIC + LARGE  # the action's file is left as it was
    assert cas.read_bytes(digest) == ZSTD_MAGIC + LARGE


def test_a_remote_blob_that_is_not_zstd_is_refused(tmp_path: Path) -> None:
    """It would otherwise read back as a blob kept as it is, which writers trust by its length."""
    cas = ContentStore(tmp_path / "cache")
    digest = digest_bytes(LARGE)
    with pytest.raises(CorruptBlobError):
        cas.put_compressed(digest, LARGE)
    with pytest.raises(CorruptBlobError):
        cas.put_compressed_stream(digest, [LARGE[:2], LARGE[2:]])
    assert not cas.has(digest)
    packed = zstandard.ZstdCompressor().compress(LARGE)
    cas.put_compressed_stream(digest, [packed[:2], packed[2:]])
    assert cas.read_bytes(digest) == LARGE


def test_an_action_output_is_linked_into_the_store_and_a_source_file_is_copied(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    owned, source = tmp_path / "output", tmp_path / "source"
    owned.write_bytes(LARGE)
    source.write_bytes(LARGE[::-1])
    linked = cas.put_file(owned, owned=True)
    copied = cas.put_file(source)
    assert os.stat(cas.path(linked)).st_ino == os.stat(owned).st_ino
    assert os.stat(cas.path(copied)).st_ino != os.stat(source).st_ino
    assert cas.read_bytes(copied) == LARGE[::-1]


def test_a_stream_that_fails_part_way_leaves_no_blob(tmp_path: Path) -> None:
    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: WriteableBuffer) -> int:
            view = memoryview(buffer).cast("B")
            if self.sent >= RAW_FROM * 2:
                raise OSError("the source went away")
            view[:] = b"x" * len(view)
            self.sent += len(view)
            return len(view)

    cas = ContentStore(tmp_path / "cache")
    with pytest.raises(OSError, match="went away"):
        cas.put_stream(io.BufferedReader(Failing()))
    assert list(cas.digests()) == []
    assert [p.name for p in cas.root.rglob("*") if p.is_file()] == []


# ---- a damaged blob is caught, whoever reads it ------------------------------------------------


def _truncate(stored: bytes) -> bytes:
    return stored[: len(stored) // 2]


def _flip(stored: bytes) -> bytes:
    bent = bytearray(stored)
    bent[len(bent) // 2] ^= 0x40
    return bytes(bent)


def _write_to_with_size(cas: ContentStore, digest: str, size: int, tmp_path: Path) -> None:
    cas.write_to(digest, size, io.BytesIO())


def _write_to_plain_file(cas: ContentStore, digest: str, size: int, tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb") as out:
        cas.write_to(digest, size, out, plain_file=True)


def _placed(cas: ContentStore, digest: str, size: int, tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb") as out:
        cas.write_to(digest, None, out, plain_file=True)


def _linked(cas: ContentStore, digest: str, size: int, tmp_path: Path) -> None:
    cas.link_to(digest, tmp_path / "linked")


def _streamed(cas: ContentStore, digest: str, size: int, tmp_path: Path) -> None:
    cas.read_bytes(digest)


READERS: dict[str, Callable[[ContentStore, str, int, Path], None]] = {
    "writer": _write_to_with_size, "writer-in-kernel": _write_to_plain_file, "placement": _placed,
    "stream": _streamed,
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("data", [LARGE, INCOMPRESSIBLE, COMPRESSIBLE], ids=["large", "incompressible",
                                                                            "compressed"])
def test_a_truncated_blob_is_caught_and_removed(reader: str, data: bytes, tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    digest = cas.put_bytes(data)
    cas.path(digest).write_bytes(_truncate(_stored(cas, digest)))
    with pytest.raises(CorruptBlobError) as raised:
        READERS[reader](cas, digest, len(data), tmp_path)
    assert raised.value.digest == digest
    assert not cas.has(digest)


@pytest.mark.parametrize("reader", ["writer", "writer-in-kernel", "stream"])
def test_a_bent_compressed_blob_is_caught_by_its_checksum(reader: str, tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    digest = cas.put_bytes(COMPRESSIBLE)
    cas.path(digest).write_bytes(_flip(_stored(cas, digest)))
    with pytest.raises(CorruptBlobError):
        READERS[reader](cas, digest, len(COMPRESSIBLE), tmp_path)
    assert not cas.has(digest)


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("data", [HUGE, LARGE, INCOMPRESSIBLE], ids=["huge", "large", "incompressible"])
def test_a_bent_raw_blob_is_caught_by_its_hash(reader: str, data: bytes, tmp_path: Path) -> None:
    """A blob kept as it is has no checksum of its own: every reader hashes it."""
    cas = ContentStore(tmp_path / "cache")
    digest = cas.put_bytes(data)
    cas.path(digest).write_bytes(_flip(data))
    with pytest.raises(CorruptBlobError):
        READERS[reader](cas, digest, len(data), tmp_path)
    assert not cas.has(digest)


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("where", [5, (16 << 20) + 100, len(HUGE) - 1], ids=["first window", "second", "last byte"])
def test_a_huge_blob_after_its_header_is_checked_in_every_window(reader: str, where: int, tmp_path: Path) -> None:
    """Kept after an 8-byte header (it begins like zstd), so its windows are not where its bytes begin."""
    data = ZSTD_MAGIC + HUGE
    cas = ContentStore(tmp_path / "cache")
    digest = cas.put_bytes(data)
    READERS[reader](cas, digest, len(data), tmp_path)  # intact: read back without a complaint
    stored = bytearray(_stored(cas, digest))
    stored[len(stored) - len(data) + where] ^= 0x01
    cas.path(digest).write_bytes(bytes(stored))
    with pytest.raises(CorruptBlobError):
        READERS[reader](cas, digest, len(data), tmp_path)
    assert not cas.has(digest)


@pytest.mark.parametrize("size", [16 << 20, (16 << 20) + 1, len(HUGE)])
def test_an_action_output_hashed_mapped_has_the_digest_of_its_bytes(size: int, tmp_path: Path) -> None:
    output = tmp_path / "output"
    output.write_bytes(HUGE[:size])
    cas = ContentStore(tmp_path / "cache")
    assert cas.put_file(output, owned=True) == digest_bytes(HUGE[:size])
    assert digest_file(output, owned=True) == digest_file(output) == digest_bytes(HUGE[:size])


def test_link_to_hashes_a_raw_blob_first_and_declines_a_compressed_one(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    raw, packed = cas.put_bytes(LARGE), cas.put_bytes(COMPRESSIBLE)
    assert cas.link_to(raw, tmp_path / "raw") and (tmp_path / "raw").read_bytes() == LARGE
    assert not cas.link_to(packed, tmp_path / "packed") and not (tmp_path / "packed").exists()
    cas.path(raw).write_bytes(_flip(LARGE))
    with pytest.raises(CorruptBlobError):
        _linked(cas, raw, len(LARGE), tmp_path / "other")
    assert not cas.has(raw)


@pytest.mark.parametrize("data", [
    random.Random(4).randbytes(RAW_FROM - 1),  # the largest blob read whole
    random.Random(5).randbytes(RAW_FROM),  # stored as it is from here; still read whole
    ZSTD_MAGIC + random.Random(6).randbytes(RAW_FROM - 12),  # after its header: the stored file is RAW_FROM
    random.Random(7).randbytes(RAW_FROM + 1),  # the smallest read in pieces
], ids=["below", "at", "at-with-header", "above"])
def test_blobs_at_the_edge_of_one_read_are_written_whole_and_checked(data: bytes, tmp_path: Path) -> None:
    """A writer reads a stored file of up to RAW_FROM bytes in one call, a larger one in pieces."""
    cas = ContentStore(tmp_path / "cache")
    digest = cas.put_bytes(data)
    for size in (len(data), None):
        for plain_file in (False, True):
            with open(tmp_path / "out", "wb") as out:
                cas.write_to(digest, size, out, plain_file)
            assert (tmp_path / "out").read_bytes() == data
    stored = _stored(cas, digest)
    for bent in (_flip(stored), stored[:-1]):
        cas.path(digest).write_bytes(bent)
        with pytest.raises(CorruptBlobError):
            cas.write_to(digest, len(data), io.BytesIO())
        assert not cas.has(digest)


def test_a_compressed_blob_larger_than_one_read_is_streamed_from_its_start(tmp_path: Path) -> None:
    """Blobs received compressed from a remote may be stored larger than a writer reads at once."""
    data = bytes(random.Random(8).choices(b"0123456789abcdef", k=3 * RAW_FROM))
    packed = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(data)
    assert len(packed) > RAW_FROM
    cas = ContentStore(tmp_path / "cache")
    digest = digest_bytes(data)
    cas.put_compressed(digest, packed)
    for plain_file in (False, True):
        with open(tmp_path / "out", "wb") as out:
            cas.write_to(digest, len(data), out, plain_file)
        assert (tmp_path / "out").read_bytes() == data


def test_a_raw_blob_goes_to_a_remote_compressed(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    for data in (LARGE, COMPRESSIBLE):
        with cas.compressed(cas.put_bytes(data)) as (body, size):
            sent = body.read()
        assert size == len(data)
        assert sent.startswith(ZSTD_MAGIC)
        assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(sent)).read() == data


# ---- the writers: same bytes whichever way contents travel -------------------------------------


def _tree(cas: ContentStore) -> Tree:
    long_dir = "usr/share/" + "deep-folder-name/" * 8
    return Tree.build([
        Entry("dev/console", Kind.CHAR, 0o600, major=5, minor=1),
        Entry("dev/sda", Kind.BLOCK, 0o660, 0, 6, major=8, minor=0),
        Entry("run/fifo", Kind.FIFO, 0o644),
        Entry("etc/empty", Kind.FILE, 0o644, digest=cas.put_bytes(b""), size=0),
        Entry("etc/motd", Kind.FILE, 0o640, 0, 42, digest=cas.put_bytes(COMPRESSIBLE), size=len(COMPRESSIBLE)),
        Entry("etc/motd.hard", Kind.HARDLINK, 0o640, target="etc/motd"),
        Entry("usr/lib/big.img", Kind.FILE, 0o755, digest=cas.put_bytes(LARGE), size=len(LARGE)),
        Entry("usr/lib/random.bin", Kind.FILE, 0o644, 1000, 1000, digest=cas.put_bytes(INCOMPRESSIBLE),
              size=len(INCOMPRESSIBLE)),
        Entry(f"{long_dir}ünïcödé-and-a-name-well-past-one-hundred-bytes.txt", Kind.FILE, 0o644,
              digest=cas.put_bytes(b"odd\n"), size=4),
        Entry("usr/link", Kind.SYMLINK, 0o777, target="/" + long_dir + "x" * 120),
        # At the edges of what a plain ustar header holds: 100-byte names and link names, folders
        # whose name is 100 bytes with the "/" tarfile adds, the largest owner numbers.
        Entry("n/" + "a" * 98, Kind.FILE, 0o4755, 2097151, 2097151, digest=cas.put_bytes(b"edge\n"), size=5),
        Entry("n/" + "b" * 97, Kind.DIR, 0o1777),
        Entry("n/" + "c" * 98, Kind.DIR, 0o755, 2097152, 7),
        Entry("n/" + "d" * 99, Kind.FILE, 0o644, 0, 2097152, digest=cas.put_bytes(b""), size=0),
        Entry("n/l", Kind.SYMLINK, 0o777, target="t" * 100),
        Entry("n/m", Kind.SYMLINK, 0o777, target="t" * 101),
        Entry("n/sda", Kind.BLOCK, 0o660, major=4095, minor=1048575),
    ])


def _tarfile_bytes(tree: Tree, cas: ContentStore, mtime: int) -> bytes:
    """What tarfile writes for the tree, the reference the tar writer is held to."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for entry in tree.entries:
            info = tar_info(entry, mtime)
            data = io.BytesIO(cas.read_bytes(entry.digest)) if entry.kind is Kind.FILE else None
            archive.addfile(info, data)
    return buffer.getvalue()


@pytest.mark.parametrize("mtime", [0, 1700000000, 8**11 - 1, 8**11])
def test_the_tar_writer_writes_what_tarfile_writes(mtime: int, tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    tree = _tree(cas)
    expected = _tarfile_bytes(tree, cas, mtime)
    buffered = io.BytesIO()
    write_tar(tree, cas, buffered, mtime)
    assert buffered.getvalue() == expected
    with open(tmp_path / "direct.tar", "wb") as out:
        write_tar(tree, cas, out, mtime, plain_file=True)
    assert (tmp_path / "direct.tar").read_bytes() == expected
    with tarfile.open(tmp_path / "direct.tar") as archive:
        member = archive.extractfile("usr/lib/big.img")
        assert member is not None and member.read() == LARGE


def test_the_cpio_writer_writes_the_same_bytes_through_the_kernel(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    tree = _tree(cas)
    buffered = io.BytesIO()
    write_cpio(tree, cas, buffered, 0)
    with open(tmp_path / "direct.cpio", "wb") as out:
        write_cpio(tree, cas, out, 0, plain_file=True)
    assert (tmp_path / "direct.cpio").read_bytes() == buffered.getvalue()
    assert LARGE in buffered.getvalue() and COMPRESSIBLE in buffered.getvalue()
