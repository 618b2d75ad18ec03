"""Blobs concatenated (the initrd's segments): the bytes are the blobs one after the other, and the
SHA-256 of the whole is remembered correctly, also when the hashing of the leading blobs is carried
over from an earlier concatenation; a bent blob is still caught, whether its hashing is known or not."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from mk.cache.cas import RAW_FROM, ContentStore, CorruptBlobError, digest_bytes
from mk.cache.concatenation import concatenate
from mk.cache.facts import SHA256, read_sha256_fact

BIG = random.Random(3).randbytes(3 * RAW_FROM)  # stored as it is
MIDDLE = b"a compressible segment\n" * 2000


def joined(cas: ContentStore, parts: list[bytes], out: Path) -> bytes:
    digests = [cas.put_bytes(p) for p in parts]
    with open(out, "wb") as f:
        concatenate(cas, digests, f)
    return out.read_bytes()


def remembered_sha256(cas: ContentStore, data: bytes) -> tuple[str, int] | None:
    fact = cas.facts.known(SHA256, digest_bytes(data))
    return None if fact is None else read_sha256_fact(fact)


def test_the_whole_is_the_blobs_in_order_and_its_sha256_is_remembered(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    parts = [BIG, MIDDLE, os.urandom(600)]
    whole = joined(cas, parts, tmp_path / "out")
    assert whole == b"".join(parts)
    assert remembered_sha256(cas, whole) == (hashlib.sha256(whole).hexdigest(), len(whole))


def test_an_edit_of_the_last_blob_carries_the_leading_hashing_over(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    joined(cas, [BIG, MIDDLE, b"first edit\n"], tmp_path / "out")
    for number in range(3):
        last = f"edit {number}\n".encode() * (number + 1)
        whole = joined(cas, [BIG, MIDDLE, last], tmp_path / "out")
        assert whole == BIG + MIDDLE + last
        assert remembered_sha256(cas, whole) == (hashlib.sha256(whole).hexdigest(), len(whole))
    # The same leading blobs in another order share no hashing.
    whole = joined(cas, [MIDDLE, BIG, b"x"], tmp_path / "out")
    assert remembered_sha256(cas, whole) == (hashlib.sha256(whole).hexdigest(), len(whole))


@pytest.mark.parametrize("known", [True, False])
def test_a_bent_leading_blob_is_caught_whether_its_hashing_is_known_or_not(known: bool, tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "cache")
    big = random.Random(4 if known else 5).randbytes(2 * RAW_FROM)  # its own, so no other test's state applies
    stored = cas.path(cas.put_bytes(big))
    if known:
        joined(cas, [big, b"before"], tmp_path / "out")
    data = bytearray(stored.read_bytes())
    data[RAW_FROM] ^= 0x01
    stored.write_bytes(bytes(data))
    with pytest.raises(CorruptBlobError), open(tmp_path / "out", "wb") as out:
        concatenate(cas, [digest_bytes(big), cas.put_bytes(b"after")], out)
    assert not stored.exists()  # dropped, so what made it runs again
    assert remembered_sha256(cas, bytes(data) + b"after") is None
