"""Compression with fixed parameters, so the bytes never depend on the machine or the time; and
decompression that tells a corrupt or cut stream from a whole one."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO, Protocol

import zstandard

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

SUFFIXES = {"none": "", "gzip": ".gz", "zstd": ".zst", "xz": ".xz"}
ZSTD_WORKERS = max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def compressed(out: BinaryIO, kind: str) -> Iterator[BinaryIO]:
    """Yield a writer that compresses into `out` with `kind` (none, gzip, zstd or xz)."""
    if kind == "none":
        yield out
    elif kind == "gzip":
        # No file name and mtime 0 in the header; level fixed.
        with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=out, mtime=0) as gz:
            yield gz  # type: ignore[misc]
    elif kind == "zstd":
        # zstd's multi-threaded mode gives the same bytes for any number of workers >= 1 (but not
        # the same as its single-threaded mode, threads=0), so use every core; tested in
        # tests/test_archives.py.
        compressor = zstandard.ZstdCompressor(level=3, threads=ZSTD_WORKERS, write_content_size=False)
        with compressor.stream_writer(out, closefd=False) as zst:
            yield zst
    elif kind == "xz":
        with lzma.LZMAFile(out, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6) as xz:
            yield xz  # type: ignore[misc]
    else:
        raise ValueError(f"unknown compression '{kind}' (choose from {', '.join(SUFFIXES)})")


class CorruptStreamError(ValueError):
    """Compressed input that does not decompress."""


class TruncatedStreamError(CorruptStreamError):
    """Compressed input that ends before its end-of-stream marker."""


class Readable(Protocol):
    """Anything with read(): a file, a decompressor, a member of another archive."""

    def read(self, size: int = -1, /) -> bytes: ...


class _Chunks(io.RawIOBase):
    """A raw reader of what `_next` returns: some bytes at a time, b"" at the end."""

    def __init__(self) -> None:
        self._pending = memoryview(b"")

    def _next(self, size: int) -> bytes:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def readinto(self, target: WriteableBuffer) -> int:
        view = memoryview(target).cast("B")
        if not self._pending:
            self._pending = memoryview(self._next(len(view)))
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


class _Prefixed(_Chunks):
    """`head`, already read from `source`, then the rest of `source`."""

    def __init__(self, head: bytes, source: Readable) -> None:
        super().__init__()
        self._pending = memoryview(head)
        self._source = source

    def _next(self, size: int) -> bytes:
        return self._source.read(size)


class _Checked(_Chunks):
    """A decompressor whose errors say what went wrong with the stream."""

    def __init__(self, stream: Readable, kind: str, errors: tuple[type[Exception], ...]) -> None:
        super().__init__()
        self._stream, self._kind, self._errors = stream, kind, errors

    def _next(self, size: int) -> bytes:
        try:
            return self._stream.read(size)
        except EOFError:
            raise TruncatedStreamError(f"the {self._kind} stream ends early") from None
        except self._errors as e:
            raise CorruptStreamError(f"the {self._kind} data is corrupt ({e})") from None


# python-zstandard's stream_reader ends quietly where a cut input does, so _Zstd feeds frames to a
# decompressobj, which knows whether a frame ended, in pieces this small: at zstd's largest ratio
# (32768:1, runs of one byte) a piece still yields at most 32 MiB at once.
_ZSTD_PIECE = 1 << 10


class _Zstd(_Chunks):
    """zstd frames one after another; raises EOFError if the input ends inside one."""

    def __init__(self, source: Readable) -> None:
        super().__init__()
        self._source = source
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = self._decompressor.decompressobj()
        self._inside = False  # some of the current frame has been read
        self._unused = b""  # input that follows the end of a frame

    def _next(self, size: int) -> bytes:
        output = b""
        while not output:
            piece, self._unused = self._unused or self._source.read(_ZSTD_PIECE), b""
            if not piece:
                if self._inside:
                    raise EOFError("the input ends inside a zstd frame")
                return b""
            self._inside = True
            output = self._frame.decompress(piece)
            if self._frame.eof:
                self._inside, self._unused = False, self._frame.unused_data
                self._frame = self._decompressor.decompressobj()
        return output


# _Xz hands liblzma this much input, and takes this much output, per call. Every call releases the
# GIL and must win it back, which with another thread running Python can take the interpreter's
# whole switch interval (5 ms): lzma.LZMAFile's calls (8 KiB in, what the caller asked for out)
# made two packages unpacked side by side slower than one after the other.
_XZ_IN = 1 << 20
_XZ_OUT = 4 << 20


class _Xz(_Chunks):
    """xz (or legacy .lzma) streams one after another, as lzma.LZMAFile reads them (data after the
    last stream that is no stream is ignored), in large calls; raises EOFError if the input ends
    inside a stream."""

    def __init__(self, source: Readable) -> None:
        super().__init__()
        self._source = source
        self._stream = lzma.LZMADecompressor()
        self._ended = False  # the last stream, and whatever follows it, has been read

    def _next(self, size: int) -> bytes:
        output = b""
        while not output and not self._ended:
            if self._stream.eof:
                rest = self._stream.unused_data or self._source.read(_XZ_IN)
                if not rest:
                    self._ended = True
                    break
                self._stream = lzma.LZMADecompressor()
                try:
                    output = self._stream.decompress(rest, _XZ_OUT)
                except lzma.LZMAError:  # trailing bytes that are not another stream, as LZMAFile
                    self._ended = True
            elif self._stream.needs_input:
                piece = self._source.read(_XZ_IN)
                if not piece:
                    raise EOFError("the input ends inside an xz stream")
                output = self._stream.decompress(piece, _XZ_OUT)
            else:
                output = self._stream.decompress(b"", _XZ_OUT)
        return output


# Magic numbers; bzip2's includes its first block's, as tarfile's does, so that a plain tar whose
# first member is named "BZh..." is not taken for one.
_MAGIC = {"gzip": (b"\x1f\x8b",), "xz": (b"\xfd7zXZ\x00",), "zstd": (b"\x28\xb5\x2f\xfd",),
          "bzip2": tuple(b"BZh%d1AY&SY" % level for level in range(1, 10))}
_OPENERS: dict[str, tuple[Callable[[BinaryIO], Readable], tuple[type[Exception], ...]]] = {
    # What each decompressor raises on bad data; each raises EOFError where its input ends early.
    # bz2 reports bad data as a plain OSError.
    "gzip": (lambda f: gzip.GzipFile(fileobj=f, mode="rb"), (gzip.BadGzipFile, zlib.error)),
    "xz": (_Xz, (lzma.LZMAError,)),
    "bzip2": (bz2.BZ2File, (OSError,)),
    "zstd": (_Zstd, (zstandard.ZstdError,)),
}


def decompressed(source: Readable, kind: str | None = None) -> io.RawIOBase:
    """A reader of `source`'s uncompressed bytes. `kind` (none, gzip, xz, bzip2 or zstd) defaults to
    what the magic number says, and anything else is read as it is.

    Bad data raises CorruptStreamError, and input that ends before its end-of-stream marker
    TruncatedStreamError: only a reader that reaches the end knows the stream was whole. Closing
    the reader leaves `source` open.
    """
    head = b""
    while len(head) < 10 and (more := source.read(10 - len(head))):
        head += more
    if kind is None:
        kind = next((k for k, magics in _MAGIC.items() if head.startswith(magics)), "none")
    plain = _Prefixed(head, source)
    if kind == "none":
        return plain
    opener, errors = _OPENERS[kind]
    return _Checked(opener(io.BufferedReader(plain)), kind, errors)
