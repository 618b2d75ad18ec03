"""Pinned downloads found in the local store by sha256: a package stored as it is is linked in,
checked first; a wrong or bent one is never handed out, and nothing is written through a link."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from mk.cache.cas import ContentStore, digest_bytes
from mk.cache.fixed_outputs import FixedOutputs
from mk.cache.parts import FIXED_OUTPUTS

PACKAGE = random.Random(9).randbytes(50_000)  # does not compress: stored as it is
TEXT = b"a line that compresses well\n" * 2000  # stored compressed


def _kept(tmp_path: Path, data: bytes) -> tuple[ContentStore, FixedOutputs, str]:
    cas = ContentStore(tmp_path / "cache")
    fixed = FixedOutputs(cas, None)
    source = tmp_path / "downloaded"
    source.write_bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()
    fixed.keep(sha256, source)
    return cas, fixed, sha256


def test_a_package_stored_as_it_is_is_linked_in(tmp_path: Path) -> None:
    cas, fixed, sha256 = _kept(tmp_path, PACKAGE)
    out = tmp_path / "out.deb"
    assert fixed.from_store(sha256, out)
    assert out.read_bytes() == PACKAGE
    assert os.stat(out).st_ino == os.stat(cas.path(digest_bytes(PACKAGE))).st_ino


def test_a_compressed_blob_is_copied_out_and_a_link_in_the_way_is_not_written_through(tmp_path: Path) -> None:
    cas, fixed, sha256 = _kept(tmp_path, TEXT)
    other = cas.put_bytes(PACKAGE)
    out = tmp_path / "out"
    os.link(cas.path(other), out)  # as a link made earlier would be
    assert fixed.from_store(sha256, out)
    assert out.read_bytes() == TEXT
    assert os.stat(out).st_ino != os.stat(cas.path(digest_bytes(TEXT))).st_ino
    assert cas.read_bytes(other) == PACKAGE


def test_a_blob_whose_sha256_is_not_the_one_asked_for_is_not_handed_out(tmp_path: Path) -> None:
    cas, fixed, sha256 = _kept(tmp_path, PACKAGE)
    wrong = hashlib.sha256(b"another package").hexdigest()
    index = tmp_path / "cache" / FIXED_OUTPUTS.name
    entry = next(index.rglob(sha256))
    (entry.parent.parent / wrong[:2]).mkdir(exist_ok=True)
    (entry.parent.parent / wrong[:2] / wrong).write_text(entry.read_text())  # a bad hint
    out = tmp_path / "out.deb"
    assert not fixed.from_store(wrong, out)
    assert not out.exists()
    assert cas.read_bytes(digest_bytes(PACKAGE)) == PACKAGE


def test_a_bent_package_in_the_store_is_refused_and_dropped(tmp_path: Path) -> None:
    cas, fixed, sha256 = _kept(tmp_path, PACKAGE)
    blob = cas.path(digest_bytes(PACKAGE))
    bent = bytearray(PACKAGE)
    bent[100] ^= 1
    blob.write_bytes(bytes(bent))
    out = tmp_path / "out.deb"
    assert not fixed.from_store(sha256, out)
    assert not out.exists() and not blob.exists()


def test_a_package_stored_as_it_is_is_read_where_it_is(tmp_path: Path) -> None:
    cas, fixed, sha256 = _kept(tmp_path, PACKAGE)
    kept = fixed.open_from_store(sha256)
    assert kept is not None
    with kept:
        assert os.fstat(kept.fileno()).st_ino == os.stat(cas.path(digest_bytes(PACKAGE))).st_ino
        assert kept.read() == PACKAGE


def test_only_a_verified_package_with_the_sha256_asked_for_is_read_where_it_is(tmp_path: Path) -> None:
    cas, fixed, sha256 = _kept(tmp_path, PACKAGE)
    assert fixed.open_from_store(hashlib.sha256(b"another package").hexdigest()) is None  # no entry
    text_sha256 = _kept(tmp_path, TEXT)[2]
    assert fixed.open_from_store(text_sha256) is None  # compressed: `from_store` copies it out
    index = tmp_path / "cache" / FIXED_OUTPUTS.name
    wrong = hashlib.sha256(b"a third package").hexdigest()
    (index / wrong[:2]).mkdir(exist_ok=True)
    (index / wrong[:2] / wrong).write_text(next(index.rglob(sha256)).read_text())  # a bad hint
    assert fixed.open_from_store(wrong) is None
    blob = cas.path(digest_bytes(PACKAGE))
    bent = bytearray(PACKAGE)
    bent[100] ^= 1
    blob.write_bytes(bytes(bent))
    assert fixed.open_from_store(sha256) is None
    assert not blob.exists()  # dropped: what fetched it fetches it again
