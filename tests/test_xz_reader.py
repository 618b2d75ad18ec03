"""mk's xz reader (compression._Xz), which hands liblzma large pieces so that the GIL is won back
rarely, reads exactly what lzma.LZMAFile reads, and tells a cut or corrupt stream as before."""

from __future__ import annotations

import io
import lzma
import random

import pytest

from mk.rules.formats import compression
from mk.rules.formats.compression import CorruptStreamError, TruncatedStreamError, decompressed

TEXT = b"".join(b"line %d of a package's file\n" % i for i in range(3000))
NOISE = random.Random(3).randbytes(20_000)
ONE = lzma.compress(TEXT)
TWO = lzma.compress(NOISE, preset=0)


@pytest.fixture(autouse=True, params=["small-pieces", "as-shipped"])
def pieces(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny pieces in and out, so that every branch of the reader's loop runs on small inputs."""
    if request.param == "small-pieces":
        monkeypatch.setattr(compression, "_XZ_IN", 7)
        monkeypatch.setattr(compression, "_XZ_OUT", 100)


def _read(data: bytes) -> bytes:
    return decompressed(io.BytesIO(data), "xz").read()


def _lzmafile(data: bytes) -> bytes:
    with lzma.LZMAFile(io.BytesIO(data)) as f:
        return f.read()


@pytest.mark.parametrize("data", [
    ONE,
    ONE + TWO,  # streams one after another
    ONE + b"not another stream",  # trailing bytes, which LZMAFile ignores too
    lzma.compress(TEXT, format=lzma.FORMAT_ALONE),  # legacy .lzma
    lzma.compress(b""),
], ids=["one-stream", "two-streams", "trailing-bytes", "lzma-alone", "empty-stream"])
def test_it_reads_what_lzmafile_reads(data: bytes) -> None:
    assert _read(data) == _lzmafile(data)


@pytest.mark.parametrize("data", [ONE, ONE + TWO], ids=["one-stream", "two-streams"])
def test_a_stream_cut_anywhere_is_truncated(data: bytes) -> None:
    for cut in (0, 1, 12, len(ONE) // 2, len(ONE) - 1, len(ONE) + 30, len(data) - 1):
        if cut >= len(data) or cut == len(ONE):
            continue
        with pytest.raises(TruncatedStreamError, match="the xz stream ends early"):
            _read(data[:cut])


def test_zeros_after_a_stream_are_refused_as_lzmafile_refuses_them() -> None:
    """Python's LZMAFile takes them for the start of a stream that never ends; so does mk."""
    with pytest.raises(EOFError):
        _lzmafile(ONE + bytes(8))
    with pytest.raises(TruncatedStreamError):
        _read(ONE + bytes(8))


def test_a_bent_stream_is_corrupt() -> None:
    bent = bytearray(ONE)
    bent[len(bent) // 2] ^= 0xFF
    with pytest.raises(CorruptStreamError, match=r"the xz data is corrupt \(Corrupt input data\)"):
        _read(bytes(bent))
