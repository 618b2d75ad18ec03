"""The content store: blobs named by the blake3 of their uncompressed bytes.

Layout: `<root>/cas/<first two hex digits>/<digest>`. A blob is stored zstd-compressed (one frame,
with zstd's content checksum), or as it is when it is large or does not compress, so that writers
and placement can copy it in the kernel (`copy_file_range`) and outputs can be linked in rather
than copied. The two are told apart by the zstd magic number; a blob kept as it is whose own
bytes begin with a zstd magic number (a compressed archive) is stored after `_RAW_HEADER`, an
empty zstd skippable frame. Every write goes through a temp file and a rename (or a link of a
finished file), so a crash leaves either the whole blob or nothing.

`stream` verifies the blake3 of everything it reads. `write_to`, for archive writers and
placement, hashes a blob kept as it is (before a kernel copy), but does not decompress and hash a
compressed one again: zstd checks its content checksum while decompressing (blobs stored before
they carried one are hashed), and the length must be the tree entry's. A blob that fails is
deleted and reported as `CorruptBlobError`, so callers rebuild it instead of using it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

import blake3

from mk.cache.facts import SHA256, BlobFacts, read_sha256_fact, sha256_fact
from mk.cache.fsutil import atomic_writer, copy_range
from mk.cache.parts import BLOBS

# Fixed level and no threads: the compressed bytes never depend on the machine.
_ZSTD_LEVEL = 3
_CHUNK = 1 << 20
_DIGEST = re.compile(r"[0-9a-f]{64}")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_RAW_HEADER = b"\x50\x2a\x4d\x18\x00\x00\x00\x00"  # skippable frame 0, no content
# Blobs this large are stored as they are: copying them in the kernel beats what compression saves.
RAW_FROM = 1 << 20
# A blob that compression shrinks by less than this share is stored as it is.
_WORTH_COMPRESSING = 0.9
_ONE_SHOT = 1 << 20  # compressed blobs up to this size are decompressed in one call


def _zstd() -> ModuleType:
    """zstandard, imported on first use: a no-op build never compresses, and the import is slow."""
    import zstandard

    return zstandard


_per_thread = threading.local()


def _decompressor() -> Any:
    """This thread's zstd decompressor: making one per blob costs more than decompressing a small blob."""
    found = getattr(_per_thread, "decompressor", None)
    if found is None:
        found = _per_thread.decompressor = _zstd().ZstdDecompressor()
    return found


def _read_buffer() -> bytearray:
    """This thread's buffer for reading a small stored blob whole (one more byte than `_ONE_SHOT`,
    to tell a larger one): allocating that much per blob costs more than reading it."""
    found: bytearray | None = getattr(_per_thread, "read_buffer", None)
    if found is None:
        found = _per_thread.read_buffer = bytearray(_ONE_SHOT + 1)
    return found


def _compressor() -> Any:
    """For blobs the store keeps compressed, all smaller than RAW_FROM: zstd's worker threads cost
    more to start than they save on so little (1.4 ms against 0.3 ms for a 150 KB tree)."""
    # The content checksum lets a reader that trusts the blob's name skip hashing it again.
    return _zstd().ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True)


def _streaming_compressor() -> Any:
    # Bytes sent to a remote need not be reproducible (a blob is named by its uncompressed
    # digest), so a large blob may use every core.
    return _zstd().ZstdCompressor(level=_ZSTD_LEVEL, threads=-1, write_checksum=True)


def _kept_raw(size: int, compressed_size: int | None = None) -> bool:
    """Whether a blob of `size` bytes (`compressed_size` once compressed, if known) is stored as it is."""
    if size >= RAW_FROM:
        return True
    return compressed_size is not None and compressed_size > size * _WORTH_COMPRESSING


def _raw_header(head: bytes) -> bytes:
    """What goes before a blob kept as it is whose first four bytes are `head`: `_RAW_HEADER` when
    they would read back as a compressed blob or as that header, else nothing."""
    return _RAW_HEADER if head in (ZSTD_MAGIC, _RAW_HEADER[:4]) else b""


def _raw_start(head: bytes) -> int | None:
    """Where the bytes of a blob kept as it is begin in a stored file beginning with `head` (at
    least its first 8 bytes); None for a compressed blob."""
    if head[:4] == ZSTD_MAGIC:
        return None
    return len(_RAW_HEADER) if head[:8] == _RAW_HEADER else 0


class CorruptBlobError(Exception):
    def __init__(self, digest: str, path: Path, why: str = "") -> None:
        because = f" ({why})" if why else ""
        super().__init__(f"blob {digest} in {path} is corrupt{because}; it was removed and will be rebuilt")
        self.digest = digest


class MissingBlobError(Exception):
    def __init__(self, digest: str) -> None:
        super().__init__(f"blob {digest} is not in the content store")
        self.digest = digest


class BlobFetcher(Protocol):
    """Where missing blobs can come from (a remote cache): each fetched blob is verified."""

    def fetch(self, digest: str) -> bool:
        """Put the blob into the store; False when it cannot be had."""
        ...

    def fetch_many(self, digests: Iterable[str]) -> None:
        """Fetch several blobs in parallel, as far as possible (failures show later, on read)."""
        ...


def digest_bytes(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


# Blobs from this size hash on every core. A smaller one hashes on one: blake3's helper threads
# then spin, waiting for more, which costs a 2-core machine more than they save (unpacking a
# package set made 2,700 sched_yield calls).
_THREADED_HASH = 16 << 20
_MAPPED_WINDOW = 16 << 20  # (a multiple of the page size)


def _hasher(size: int) -> blake3.blake3:
    return blake3.blake3(max_threads=blake3.blake3.AUTO if size >= _THREADED_HASH else 1)


def digest_file(path: str | Path, owned: bool = False) -> str:
    """`owned`: the file is mk's own and nothing truncates it while it is read (an action's finished
    output in its scratch folder), so a large one may be hashed mapped, which blake3 spreads over
    every core without copying it (a third of the time of reading it here). Only such files: a
    mapped file truncated by someone else kills the process with SIGBUS."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        hasher = _hasher(size)
        if owned and size >= _THREADED_HASH:
            _hash_mapped(f.fileno(), 0, size, hasher)
        else:
            while chunk := f.read(_CHUNK):
                hasher.update(chunk)
    return hasher.hexdigest()


def _hash_mapped(fd: int, start: int, end: int, hasher: blake3.blake3) -> None:
    """Hash bytes `start` to `end` of the file a window at a time (a mapping's pages count towards
    the resident set while mapped); windows begin at multiples of their size, as mmap wants."""
    import mmap  # only for large files

    for offset in range(start - start % _MAPPED_WINDOW, end, _MAPPED_WINDOW):
        length = min(_MAPPED_WINDOW, end - offset)
        with mmap.mmap(fd, length, offset=offset, access=mmap.ACCESS_READ) as window, memoryview(window) as view:
            hasher.update(view[max(start - offset, 0):])


class ContentStore:
    def __init__(self, root: Path, fetcher: BlobFetcher | None = None) -> None:
        self.root = root / BLOBS.name
        self._prefix = str(self.root) + "/"  # plain strings: this is the no-op build's hot path
        self.fetcher = fetcher  # a remote cache: blobs missing here are read from it
        self.facts = BlobFacts(root)  # what was learnt from blobs' bytes, by their digests

    def with_fetcher(self, fetcher: BlobFetcher) -> ContentStore:
        """The same store, reading blobs it lacks from `fetcher` (a build's remote cache)."""
        return ContentStore(self.root.parent, fetcher)

    def prefetch(self, digests: Iterable[str]) -> None:
        """Fetch missing blobs from the remote in parallel before they are read one by one."""
        if self.fetcher is not None:
            missing = [d for d in dict.fromkeys(digests) if not self.has(d)]
            if missing:
                self.fetcher.fetch_many(missing)

    def path(self, digest: str) -> Path:
        return Path(self._where(digest))

    def _where(self, digest: str) -> str:
        return f"{self._prefix}{digest[:2]}/{digest}"

    def has(self, digest: str) -> bool:
        return os.path.isfile(self._where(digest))

    def obtainable(self, digest: str) -> bool:
        """Here, or possibly on the remote cache this store reads from (checked when it is read:
        a build that finds it missing there rebuilds what made it)."""
        return self.fetcher is not None or self.has(digest)

    def put_bytes(self, data: bytes) -> str:
        digest = digest_bytes(data)
        if not self.has(digest):
            size = len(data)
            packed = None if _kept_raw(size) else _compressor().compress(data)
            with atomic_writer(self.path(digest)) as out:
                if packed is None or _kept_raw(size, len(packed)):
                    out.write(_raw_header(data[:4]))
                    out.write(data)
                else:
                    out.write(packed)
        return digest

    def put_file(self, source: Path, owned: bool = False) -> str:
        """Store a file's bytes, streaming: memory use does not grow with the file.

        With `owned` (an action's finished output in its scratch folder, which nothing writes to
        again), a blob stored as it is becomes a hard link to the file rather than a copy.
        """
        digest = digest_file(source, owned)
        if self.has(digest):
            return digest
        with open(source, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            header = _raw_header(src.read(4))
            src.seek(0)
            if _kept_raw(size):
                if not (owned and not header and self._link_in(source, digest)):
                    with atomic_writer(self.path(digest)) as out:
                        out.write(header)
                        out.flush()
                        copy_range(src.fileno(), out.fileno(), size)
                return digest
            with atomic_writer(self.path(digest)) as out:
                _compressor().copy_stream(src, out)
                out.flush()
                if _kept_raw(size, os.fstat(out.fileno()).st_size):
                    out.seek(0)
                    out.truncate()
                    out.write(header)
                    out.flush()
                    copy_range(src.fileno(), out.fileno(), size)
        return digest

    def _link_in(self, source: Path, digest: str) -> bool:
        """Hard-link a finished file in as the blob `digest`; False where links cannot be made."""
        final = self.path(digest)
        temp = final.parent / f".tmp-link-{os.getpid()}-{threading.get_ident()}-{digest[:16]}"
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            os.link(source, temp)
            os.chmod(temp, 0o644)
            os.replace(temp, final)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            return False
        return True

    def put_stream(self, source: BinaryIO) -> tuple[str, int]:
        """Store bytes read from a stream; returns (digest, size). Memory use stays flat."""
        self.root.mkdir(parents=True, exist_ok=True)
        import tempfile

        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        hasher = blake3.blake3()
        size = 0
        try:
            with os.fdopen(fd, "wb") as tmp:
                first = source.read(RAW_FROM)
                hasher.update(first)
                size = len(first)
                if _kept_raw(size):
                    tmp.write(_raw_header(first[:4]))
                    tmp.write(first)
                    while chunk := source.read(_CHUNK):
                        hasher.update(chunk)
                        size += len(chunk)
                        tmp.write(chunk)
                else:
                    writer = _compressor().stream_writer(tmp, closefd=False)
                    writer.write(first)
                    while chunk := source.read(_CHUNK):
                        hasher.update(chunk)
                        size += len(chunk)
                        writer.write(chunk)
                    writer.flush(_zstd().FLUSH_FRAME)
            digest = hasher.hexdigest()
            final = self.path(digest)
            if final.is_file():
                os.unlink(tmp_name)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp_name, 0o644)
                os.replace(tmp_name, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return digest, size

    def put_compressed(self, digest: str, compressed: bytes) -> None:
        """Store a blob received already compressed (from a remote); verified before it lands."""
        if not compressed.startswith(ZSTD_MAGIC):  # else it would read back as a blob kept as it is
            raise CorruptBlobError(digest, self.path(digest), "not zstd")
        data = _zstd().ZstdDecompressor().decompress(compressed, max_output_size=1 << 34)
        if digest_bytes(data) != digest:
            raise CorruptBlobError(digest, self.path(digest))
        with atomic_writer(self.path(digest)) as out:
            out.write(compressed)

    def put_compressed_stream(self, digest: str, chunks: Iterable[bytes]) -> int:
        """Store a blob arriving compressed in chunks (a download), verifying it as it comes in.

        Memory stays flat whatever the blob's size or compression ratio; nothing lands unless the
        bytes decompress to content named `digest`. Returns the compressed size.
        """
        zstandard = _zstd()
        hasher = blake3.blake3()
        size = 0

        class _Hasher:
            def write(self, data: bytes) -> int:
                hasher.update(data)
                return len(data)

        try:
            with atomic_writer(self.path(digest)) as out:
                checker = zstandard.ZstdDecompressor().stream_writer(_Hasher(), closefd=False)
                head = b""
                for chunk in chunks:
                    if len(head) < 4:
                        head += chunk[: 4 - len(head)]
                        if not ZSTD_MAGIC.startswith(head):  # else it would read back as a raw blob
                            raise CorruptBlobError(digest, self.path(digest), "not zstd")
                    size += len(chunk)
                    out.write(chunk)
                    checker.write(chunk)
                checker.flush()
                if hasher.hexdigest() != digest or head != ZSTD_MAGIC:
                    raise CorruptBlobError(digest, self.path(digest))
        except zstandard.ZstdError:
            raise CorruptBlobError(digest, self.path(digest)) from None
        return size

    def sha256(self, digest: str) -> tuple[str, int]:
        """The SHA-256 (in hex) and the size of blob `digest`: remembered, or learnt once from its
        bytes, verified as they are read."""

        def hashed() -> bytes:
            hasher, size = hashlib.sha256(), 0
            for chunk in self.stream(digest):
                hasher.update(chunk)
                size += len(chunk)
            return sha256_fact(hasher.hexdigest(), size)

        return read_sha256_fact(self.facts.learn(SHA256, digest, hashed))

    def read_bytes(self, digest: str, size: int | None = None) -> bytes:
        parts: list[bytes] = []
        for chunk in self.stream(digest, size):
            parts.append(chunk)
        return b"".join(parts)

    def stream(self, digest: str, size: int | None = None) -> Iterator[bytes]:
        """Yield the blob's bytes in chunks; a wrong blob raises CorruptBlobError in place of its last chunk.

        The stream reads one chunk ahead, so the check runs even for a caller that takes only the
        bytes it expects (a tar writer reads exactly a member's size). With `size` (a tree entry's),
        a blob of any other length is corrupt too. A corrupt blob is deleted, so it is rebuilt.
        Callers must still publish nothing before they have all the bytes: what came before the
        last chunk is unverified.
        """
        path = self.path(digest)
        hasher = blake3.blake3()
        zstandard = _zstd()
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below; the retry needs it outside `with`)
        except FileNotFoundError:
            if self.fetcher is None or not self.fetcher.fetch(digest):
                raise MissingBlobError(digest) from None
            try:
                f = open(path, "rb")  # noqa: SIM115
            except FileNotFoundError:
                raise MissingBlobError(digest) from None
        count, ahead = 0, b""
        try:
            with f:
                start = _raw_start(f.read(8))
                f.seek(start or 0)
                reader = f if start is not None else zstandard.ZstdDecompressor().stream_reader(f)
                while chunk := reader.read(_CHUNK):
                    if ahead:
                        yield ahead
                    hasher.update(chunk)
                    count += len(chunk)
                    if size is not None and count > size:
                        raise self._corrupt(digest, f"it holds more than the {size} bytes its tree entry says")
                    ahead = chunk
        except zstandard.ZstdError:
            raise self._corrupt(digest) from None
        if hasher.hexdigest() != digest:
            raise self._corrupt(digest)
        if size is not None and count != size:
            raise self._corrupt(digest, f"it holds {count} bytes, its tree entry says {size}")
        if ahead:
            yield ahead

    def _corrupt(self, digest: str, why: str = "") -> CorruptBlobError:
        """Drops the blob, so whatever made it runs again, and says so."""
        path = self.path(digest)
        self._drop(path)
        return CorruptBlobError(digest, path, why)

    def open(self, digest: str, size: int | None = None) -> BlobReader:
        """A file-like reader of the blob, verified as `stream` is (before its last bytes)."""
        return BlobReader(self.stream(digest, size))

    def copy_to(self, digest: str, out: BinaryIO, size: int | None = None) -> None:
        for chunk in self.stream(digest, size):
            out.write(chunk)

    def write_to(self, digest: str, size: int | None, out: BinaryIO, plain_file: bool = False) -> None:
        """Write the blob to `out`, checked as the module's doc says; `size` is what its tree entry
        says it holds (without it, a compressed blob is hashed too). `plain_file` says `out` is a
        file whose descriptor the bytes may go to directly, bypassing its buffer, so that a blob
        kept as it is is copied in the kernel.

        Like `stream`, it may raise CorruptBlobError after writing some bytes: callers publish
        nothing before it returns. Archive writers call this for every file of a tree, so it
        works on bare descriptors, with one decompressor per thread.
        """
        try:
            fd = os.open(self._where(digest), os.O_RDONLY)
        except FileNotFoundError:
            self.copy_to(digest, out, size)  # from the remote, or MissingBlobError
            return
        try:
            self._write_from(digest, fd, size, out, plain_file)
        finally:
            os.close(fd)

    def _write_from(self, digest: str, fd: int, size: int | None, out: BinaryIO, plain_file: bool) -> None:
        # Most blobs a writer reads are small: one read takes the whole stored file (a shorter
        # answer than asked is the end of a regular file), where a size and a header would cost
        # two system calls more per file of the tree.
        buffer = _read_buffer()
        count = os.preadv(fd, [buffer], 0)
        small = count <= _ONE_SHOT
        whole = memoryview(buffer)[:count]
        stored = count if small else os.fstat(fd).st_size
        head = bytes(whole[:18])  # the magic number and the largest zstd frame header
        start = _raw_start(head)
        if start is not None:
            if small:
                self._write_small_raw(digest, whole[start:], size, out)
            else:
                self._write_raw(digest, fd, start, stored - start, size, out, plain_file)
            return
        zstandard = _zstd()
        try:
            checked = zstandard.get_frame_parameters(head).has_checksum
        except zstandard.ZstdError:
            checked = False
        if not checked or size is None:  # stored before blobs carried zstd's checksum: hash it
            self.copy_to(digest, out, size)
            return
        try:
            if small:
                data = _decompressor().decompress(whole, max_output_size=size + 1)
                if len(data) == size:
                    out.write(data)
                    return
                # More frames than one, or the wrong length: `stream` tells which, and says why.
                self.copy_to(digest, out, size)
                return
            count = 0
            with open(fd, "rb", closefd=False) as f:
                reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
                while chunk := reader.read(_CHUNK):
                    count += len(chunk)
                    if count > size:
                        raise self._size_mismatch(digest, count, size)
                    out.write(chunk)
            if count != size:
                raise self._size_mismatch(digest, count, size)
        except zstandard.ZstdError:
            raise self._corrupt(digest) from None

    def link_to(self, digest: str, target: Path) -> bool:
        """Hard-link the blob, verified, at `target` for a reader that never writes to it (mk's own
        action functions); False when it is not stored as it is here (then copy it)."""
        kept = self.open_kept(digest)
        if kept is None:
            return False
        with kept:
            try:
                os.link(self._where(digest), target)
            except OSError:
                return False
        return True

    def open_kept(self, digest: str) -> BinaryIO | None:
        """The stored file of a blob kept as it is, open at its start and verified, for a reader
        that reads it where it is (a package: no copy, no link, no folder for either); None when it
        is not stored as it is here. What is read is what was hashed: the store replaces a file by
        renaming another over it, never by writing into it."""
        try:
            kept = open(self._where(digest), "rb")  # noqa: SIM115 (handed to the caller open)
        except FileNotFoundError:
            return None
        try:
            if _raw_start(kept.read(8)) != 0:  # compressed, or after a header: no use to a reader
                kept.close()
                return None
            self._check_raw(digest, kept.fileno(), 0)
            kept.seek(0)
        except BaseException:
            kept.close()
            raise
        return kept

    def _check_raw(self, digest: str, fd: int, start: int) -> None:
        """Hash a blob kept as it is, which begins at `start` of the open stored file `fd`."""
        end = os.fstat(fd).st_size
        hasher = _hasher(end - start)
        if end - start >= _THREADED_HASH:  # the store's files are replaced, never truncated: safe to map
            _hash_mapped(fd, start, end, hasher)
        else:
            buffer = bytearray(_CHUNK)
            offset = start
            while count := os.preadv(fd, [buffer], offset):
                hasher.update(memoryview(buffer)[:count])
                offset += count
        if hasher.hexdigest() != digest:
            raise self._corrupt(digest)

    def _write_raw(self, digest: str, fd: int, start: int, stored: int, size: int | None, out: BinaryIO,
                   plain_file: bool) -> None:
        """Write a blob kept as it is, `stored` bytes from `start` of the open stored file `fd`,
        hashing it on the way."""
        if size is not None and stored != size:
            raise self._size_mismatch(digest, stored, size)
        if plain_file and stored > _ONE_SHOT:  # (a small one costs fewer system calls read and written)
            self._check_raw(digest, fd, start)  # then the bytes need not pass through here
            out.flush()
            copy_range(fd, out.fileno(), stored, start)
            return
        hasher = _hasher(stored)
        offset = start
        while chunk := os.pread(fd, _CHUNK, offset):
            hasher.update(chunk)
            out.write(chunk)
            offset += len(chunk)
        if hasher.hexdigest() != digest:
            raise self._corrupt(digest)

    def _write_small_raw(self, digest: str, data: memoryview, size: int | None, out: BinaryIO) -> None:
        """Write a blob kept as it is whose stored file (read whole) holds `data`, hashing it first."""
        if size is not None and len(data) != size:
            raise self._size_mismatch(digest, len(data), size)
        if blake3.blake3(data).hexdigest() != digest:
            raise self._corrupt(digest)
        out.write(data)

    def _size_mismatch(self, digest: str, count: int, size: int) -> CorruptBlobError:
        if count > size:
            return self._corrupt(digest, f"it holds more than the {size} bytes its tree entry says")
        return self._corrupt(digest, f"it holds {count} bytes, its tree entry says {size}")

    @contextlib.contextmanager
    def compressed(self, digest: str) -> Iterator[tuple[BinaryIO, int]]:
        """The blob as zstd (what a remote cache takes) and its uncompressed size, verified first:
        the stored file itself, or for a blob stored as it is, a compressed copy in a temp file."""
        size = sum(len(chunk) for chunk in self.stream(digest))
        with open(self._where(digest), "rb") as f:
            start = _raw_start(f.read(8))
            f.seek(start or 0)
            if start is None:
                yield f, size
                return
            import tempfile

            with tempfile.TemporaryFile(dir=self.root) as packed:
                _streaming_compressor().copy_stream(f, packed)
                packed.seek(0)
                yield packed, size

    def verify(self, digest: str) -> bool:
        try:
            for _ in self.stream(digest):
                pass
        except CorruptBlobError:
            return False
        return True

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest, in order; strays (see `strays`) are passed over."""
        return (path.name for path, is_blob in self._scan() if is_blob)

    def strays(self) -> list[Path]:
        """What mk never writes here (a folder inside a shard, a file not named by its digest),
        for maintenance to name and leave alone rather than trip on."""
        return [path for path, is_blob in self._scan() if not is_blob]

    def _scan(self) -> Iterator[tuple[Path, bool]]:
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if not shard.is_dir():  # put_stream's temp files live beside the shards
                continue
            for blob in sorted(shard.iterdir()):
                if not blob.name.startswith(".tmp-"):
                    yield blob, (_DIGEST.fullmatch(blob.name) is not None and blob.name.startswith(shard.name)
                                 and blob.is_file())

    def _drop(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class BlobReader(io.RawIOBase):
    """Adapts ContentStore.stream to the file interface that tarfile and friends expect."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = memoryview(b"")  # a view, so consuming it in small reads copies nothing

    def readable(self) -> bool:
        return True

    def readinto(self, target: WriteableBuffer) -> int:
        view = memoryview(target).cast("B")
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = memoryview(chunk)
        count = min(len(view), len(self._buffer))
        view[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count
