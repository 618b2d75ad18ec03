"""Safe import of tarballs: every way out of the tree is refused, naming the member."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest
from conftest import WorkspaceFactory, assert_nothing_imported, parse_summary

from mk.cache.cas import ContentStore
from mk.cache.tree import Kind
from mk.rules.tarball import UnsafeArchiveError, import_tar


def make_tar(members: list[tuple[str, bytes, str]], compression: str = "") -> bytes:
    """members: (name, data, kind) with kind 'file', 'dir', 'sym:<target>' or 'hard:<target>'."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:  # type: ignore[call-overload]
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif kind.startswith("sym:"):
                info.type, info.linkname = tarfile.SYMTYPE, kind[4:]
                archive.addfile(info)
            elif kind.startswith("hard:"):
                info.type, info.linkname = tarfile.LNKTYPE, kind[5:]
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def load(data: bytes, tmp_path: Path) -> object:
    return import_tar(io.BytesIO(data), ContentStore(tmp_path / "cas"), "tarball 'evil.tar'")


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("../evil", b"x", "file")], "member '../evil': '../evil' climbs out of the tree with '..'"),
        ([("a/../../evil", b"x", "file")], "climbs out of the tree"),
        ([("/etc/passwd", b"x", "file")], "member '/etc/passwd': '/etc/passwd' is an absolute path"),
        ([("a/link", b"", "sym:../../etc/passwd")], "symlink 'a/link' -> '../../etc/passwd' escapes the tree"),
        ([("evil", b"", "sym:/etc"), ("evil/passwd", b"x", "file")],
         "member 'evil/passwd' lies under the symlink 'evil'"),
        ([("h", b"", "hard:../../etc/passwd")], "hard link 'h' -> '../../etc/passwd'"),
        ([("h", b"", "hard:nothing")], "hard link 'h' points at 'nothing', which is not an earlier file"),
        ([("a", b"one", "file"), ("a", b"two", "file")], "member 'a' appears twice with different contents"),
    ],
)
def test_malicious_members_are_refused(members: list[tuple[str, bytes, str]], message: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchiveError) as error:
        load(make_tar(members), tmp_path)
    assert message in str(error.value)
    assert str(error.value).startswith("tarball 'evil.tar': ")


def test_truncated_and_garbage_archives_are_refused(tmp_path: Path) -> None:
    good = make_tar([("big", b"z" * 100_000, "file")])
    for cut in (511, 20_000, len(good) - 2_000):
        with pytest.raises(UnsafeArchiveError, match=re.escape("tarball 'evil.tar': the archive is truncated")):
            load(good[:cut], tmp_path)
    with pytest.raises(UnsafeArchiveError, match="not a readable tar archive"):
        load(b"this is not a tarball at all" * 40, tmp_path)


@pytest.mark.parametrize("compression", ["", "gz", "xz", "bz2"])
def test_good_archives_import_whatever_the_compression(compression: str, tmp_path: Path) -> None:
    data = make_tar([("./", b"", "dir"), ("./bin/", b"", "dir"), ("./bin/sh", b"#!", "file"),
                     ("./usr/bin/sh", b"", "hard:bin/sh"), ("./lib", b"", "sym:usr/lib"),
                     ("./bin/sh", b"#!", "file")], compression)
    tree = load(data, tmp_path)
    kinds = {e.path: e.kind for e in tree.entries}  # type: ignore[attr-defined]
    assert kinds == {"bin": Kind.DIR, "bin/sh": Kind.FILE, "lib": Kind.SYMLINK, "usr": Kind.DIR,
                     "usr/bin": Kind.DIR, "usr/bin/sh": Kind.HARDLINK}


def test_layer_build_names_the_member_and_stores_nothing(workspace: WorkspaceFactory) -> None:
    ws = workspace({"img/BUILD": 'layer(name = "base", tars = ["evil.tar"])\n'})
    ws.write("img/evil.tar", make_tar([("ok", b"fine", "file"), ("../../../escaped", b"pwned", "file")]))
    result = ws.mk("build", "//img:base")
    assert result.code == 1, result
    assert ("error: Layer //img:base failed: tarball 'img/evil.tar': member '../../../escaped': "
            "'../../../escaped' climbs out of the tree with '..'") in result.err
    assert parse_summary(result.out).executed == 0
    assert_nothing_imported(ws.cache_dir, b"pwned")
    assert not (ws.root / "mk-out" / "img" / "base.tree").exists()
