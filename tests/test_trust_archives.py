"""Trust every byte: archive writers verify what they read, and readers refuse what is cut or bent."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from mk.cache.cas import ContentStore, CorruptBlobError
from mk.cache.tree import Entry, Kind, Tree
from mk.rules.formats.cpio import write_cpio
from mk.rules.formats.oci import ImageConfig, write_oci_archive
from mk.rules.formats.tar import write_tar

CONTENT = b"every byte of this file must reach the archive unchanged\n" * 40

# ---- 1. writers verify every blob they read --------------------------------------------------


def _tar(tree: Tree, cas: ContentStore, scratch: Path) -> None:
    write_tar(tree, cas, io.BytesIO(), 0)


def _cpio(tree: Tree, cas: ContentStore, scratch: Path) -> None:
    write_cpio(tree, cas, io.BytesIO(), 0)


def _oci(tree: Tree, cas: ContentStore, scratch: Path) -> None:
    write_oci_archive([tree], cas, io.BytesIO(), 0, ImageConfig(), "latest", scratch)


WRITERS: dict[str, Callable[[Tree, ContentStore, Path], None]] = {"tar": _tar, "cpio": _cpio, "oci": _oci}


def _stored(tmp_path: Path, size: int = len(CONTENT)) -> tuple[ContentStore, Tree, str]:
    """A store holding CONTENT and a tree whose file entry names it with `size` bytes."""
    cas = ContentStore(tmp_path / "cache")
    digest = cas.put_bytes(CONTENT)
    tree = Tree.build([Entry("etc/motd", Kind.FILE, 0o644, digest=digest, size=size),
                       Entry("etc/zz", Kind.FILE, 0o644, digest=cas.put_bytes(b"z"), size=1)])
    return cas, tree, digest


def _removed(cas: ContentStore, digest: str, why: str = "") -> str:
    return f"blob {digest} in {cas.path(digest)} is corrupt{why}; it was removed and will be rebuilt"


@pytest.mark.parametrize("writer", WRITERS)
def test_a_flipped_byte_in_a_blob_is_never_written(writer: str, tmp_path: Path) -> None:
    cas, tree, digest = _stored(tmp_path)
    WRITERS[writer](tree, cas, tmp_path)  # the intact store writes
    flipped = bytearray(CONTENT)
    flipped[100] ^= 0x01
    cas.path(digest).write_bytes(zstandard.ZstdCompressor().compress(bytes(flipped)))
    with pytest.raises(CorruptBlobError) as raised:
        WRITERS[writer](tree, cas, tmp_path)
    assert str(raised.value) == _removed(cas, digest)
    assert not cas.path(digest).exists()


@pytest.mark.parametrize("writer", WRITERS)
def test_a_blob_that_decompresses_short_is_never_written(writer: str, tmp_path: Path) -> None:
    cas, tree, digest = _stored(tmp_path)
    stored = cas.path(digest).read_bytes()
    cas.path(digest).write_bytes(stored[: len(stored) // 2])
    with pytest.raises(CorruptBlobError) as raised:
        WRITERS[writer](tree, cas, tmp_path)
    assert str(raised.value) == _removed(cas, digest)
    assert not cas.path(digest).exists()


@pytest.mark.parametrize(
    ("size", "why"),
    [
        (len(CONTENT) - 1, f"it holds more than the {len(CONTENT) - 1} bytes its tree entry says"),
        (len(CONTENT) + 1, f"it holds {len(CONTENT)} bytes, its tree entry says {len(CONTENT) + 1}"),
    ],
    ids=["longer", "shorter"],
)
@pytest.mark.parametrize("writer", WRITERS)
def test_a_blob_whose_size_disagrees_with_its_tree_entry_is_never_written(
    writer: str, size: int, why: str, tmp_path: Path
) -> None:
    cas, tree, digest = _stored(tmp_path, size=size)
    with pytest.raises(CorruptBlobError) as raised:
        WRITERS[writer](tree, cas, tmp_path)
    assert str(raised.value) == _removed(cas, digest, f" ({why})")
    assert not cas.path(digest).exists()
