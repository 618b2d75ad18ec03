"""Compression with fixed parameters, so the bytes never depend on the machine or the time."""

from __future__ import annotations

import contextlib
import gzip
import lzma
import os
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

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
