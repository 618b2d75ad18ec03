"""The content store: blobs named by the blake3 of their uncompressed bytes, stored zstd-compressed.

Layout: `<root>/cas/<first two hex digits>/<digest>`. Every write goes through a temp file and
a rename, so a crash leaves either the whole blob or nothing. Every read is verified; a blob
whose bytes no longer match its name is deleted and reported as `CorruptBlobError`, so callers
rebuild it instead of using it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

import blake3

from mk.cache.fsutil import atomic_writer
from mk.cache.parts import BLOBS

# Fixed level and no threads: the compressed bytes never depend on the machine.
_ZSTD_LEVEL = 3
_CHUNK = 1 << 20
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _zstd() -> ModuleType:
    """zstandard, imported on first use: a no-op build never compresses, and the import is slow."""
    import zstandard

    return zstandard


def _streaming_compressor() -> Any:
    # Stored bytes need not be reproducible (a blob is named by its uncompressed digest), so
    # large blobs may use every core.
    return _zstd().ZstdCompressor(level=_ZSTD_LEVEL, threads=-1)


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


def digest_file(path: str | Path) -> str:
    hasher = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


class ContentStore:
    def __init__(self, root: Path, fetcher: BlobFetcher | None = None) -> None:
        self.root = root / BLOBS.name
        self._prefix = str(self.root) + "/"  # plain strings: this is the no-op build's hot path
        self.fetcher = fetcher  # a remote cache: blobs missing here are read from it

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
            with atomic_writer(self.path(digest)) as out:
                out.write(_zstd().ZstdCompressor(level=_ZSTD_LEVEL).compress(data))
        return digest

    def put_file(self, source: Path) -> str:
        """Store a file's bytes, streaming: memory use does not grow with the file."""
        digest = digest_file(source)
        if not self.has(digest):
            with open(source, "rb") as src, atomic_writer(self.path(digest)) as out:
                _streaming_compressor().copy_stream(src, out)
        return digest

    def put_stream(self, source: BinaryIO) -> tuple[str, int]:
        """Store bytes read from a stream; returns (digest, size). Memory use stays flat."""
        self.root.mkdir(parents=True, exist_ok=True)
        import tempfile

        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        hasher = blake3.blake3()
        size = 0
        try:
            with os.fdopen(fd, "wb") as tmp:
                writer = _streaming_compressor().stream_writer(tmp, closefd=False)
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
                for chunk in chunks:
                    size += len(chunk)
                    out.write(chunk)
                    checker.write(chunk)
                checker.flush()
                if hasher.hexdigest() != digest:
                    raise CorruptBlobError(digest, self.path(digest))
        except zstandard.ZstdError:
            raise CorruptBlobError(digest, self.path(digest)) from None
        return size

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
                reader = zstandard.ZstdDecompressor().stream_reader(f)
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
