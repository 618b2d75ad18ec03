"""Compression with fixed parameters, so the bytes never depend on the machine or the time."""

from __future__ import annotations

import contextlib
import gzip
import lzma
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

SUFFIXES = {"none": "", "gzip": ".gz", "zstd": ".zst", "xz": ".xz"}


@contextlib.contextmanager
def compressed(out: BinaryIO, kind: str) -> Iterator[BinaryIO]:
    """Yield a writer that compresses into `out` with `kind` (none, gzip, zstd or xz)."""
    if kind == "none":
        yield out
    elif kind == "gzip":
        # No file name and mtime 0 in the header; level fixed.
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=out, mtime=0) as gz:
            yield gz  # type: ignore[misc]
    elif kind == "zstd":
        # Single-threaded: zstd's multi-threaded output depends on the thread count.
        compressor = zstandard.ZstdCompressor(level=9, threads=0, write_content_size=False)
        with compressor.stream_writer(out, closefd=False) as zst:
            yield zst
    elif kind == "xz":
        with lzma.LZMAFile(out, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6) as xz:
            yield xz  # type: ignore[misc]
    else:
        raise ValueError(f"unknown compression '{kind}' (choose from {', '.join(SUFFIXES)})")
