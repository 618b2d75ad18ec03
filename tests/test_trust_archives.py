"""Trust every byte: archive writers verify what they read, and readers refuse what is cut or bent."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import json
import lzma
import tarfile
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import zstandard
from conftest import WorkspaceFactory
from debrepo import Deb, Member, app_repo, build_deb
from test_deb import deb_workspace
from test_tarball_import import make_tar

from mk.cache.cas import ContentStore, CorruptBlobError
from mk.cache.tree import Entry, Kind, Tree, TreeError
from mk.rules.deb.debfile import DebContents, DebError, read_deb
from mk.rules.deb.lockfile import LockedPackage, Lockfile
from mk.rules.formats.cpio import FieldOverflowError, write_cpio
from mk.rules.formats.oci import ImageConfig, write_layer, write_oci_archive
from mk.rules.formats.tar import write_tar
from mk.rules.tarball import UnsafeArchiveError, import_tar

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress, "xz": lzma.compress, "bzip2": bz2.compress, "zstd": zstandard.ZstdCompressor().compress,
}
CONTENT = b"every byte of this file must reach the archive unchanged\n" * 40

# ---- 1. writers verify every blob they read --------------------------------------------------


def _tar(tree: Tree, cas: ContentStore, scratch: Path) -> None:
    write_tar(tree, cas, io.BytesIO(), 0)


def _cpio(tree: Tree, cas: ContentStore, scratch: Path) -> None:
    write_cpio(tree, cas, io.BytesIO(), 0)


def _oci(tree: Tree, cas: ContentStore, scratch: Path) -> None:
    layer = scratch / "layer.tar.gz"
    with open(layer, "wb") as out:
        blob = write_layer(tree, cas, out, 0)
    write_oci_archive([(layer, blob)], io.BytesIO(), 0, ImageConfig(), "latest", scratch)


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


def test_an_oci_layer_that_is_not_what_its_record_says_is_never_archived(tmp_path: Path) -> None:
    cas, tree, _ = _stored(tmp_path)
    layer = tmp_path / "layer.tar.gz"
    with open(layer, "wb") as out:
        blob = write_layer(tree, cas, out, 0)
    damaged = bytearray(layer.read_bytes())
    damaged[-10] ^= 0x01
    layer.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=f"OCI blob layer.tar.gz: its sha256 is [0-9a-f]{{64}}, not the "
                                         f"{blob.digest} recorded for it"):
        write_oci_archive([(layer, blob)], io.BytesIO(), 0, ImageConfig(), "latest", tmp_path)


# ---- 4. numbers that no header can hold --------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (Entry("d", Kind.DIR, 0o755, uid=4294967297), "'d': uid 4294967297 is out of range (at most 4294967295)"),
        (Entry("d", Kind.DIR, 0o755, gid=1 << 32), "'d': gid 4294967296 is out of range (at most 4294967295)"),
        (Entry("d", Kind.DIR, 0o40755), "'d': mode 0o40755 is out of range (at most 0o7777)"),
        (Entry("x", Kind.CHAR, 0o600, major=4294967296), "'x': device major 4294967296 is out of range (at most 4095)"),
        (Entry("x", Kind.BLOCK, 0o600, minor=1 << 20), "'x': device minor 1048576 is out of range (at most 1048575)"),
        (Entry("f", Kind.FILE, 0o644, digest="a" * 64, size=1 << 63),
         "'f': size 9223372036854775808 is out of range (at most 9223372036854775807)"),
    ],
    ids=["uid", "gid", "mode", "major", "minor", "size"],
)
def test_trees_refuse_numbers_linux_cannot_hold(entry: Entry, message: str) -> None:
    with pytest.raises(TreeError) as raised:
        Tree.build([entry])
    assert str(raised.value) == message


def test_decoding_refuses_a_manifest_with_a_device_number_linux_cannot_hold() -> None:
    manifest = msgpack.packb([1, [["x", "char", 0o600, 0, 0, "", 0, "", (1 << 64) - 1, 0]]])
    with pytest.raises(TreeError) as raised:
        Tree.decode(manifest)
    assert str(raised.value) == "'x': device major 18446744073709551615 is out of range (at most 4095)"


def test_cpio_refuses_an_mtime_past_2106(tmp_path: Path) -> None:
    tree = Tree.build([Entry("etc", Kind.DIR, 0o755)])
    with pytest.raises(FieldOverflowError) as raised:
        write_cpio(tree, ContentStore(tmp_path), io.BytesIO(), 1 << 32)
    assert str(raised.value) == ("cpio: 'etc': mtime (source_date_epoch) 4294967296 does not fit the newc header "
                                 "(at most 4294967295)")


def test_cpio_refuses_a_file_of_4_gib(tmp_path: Path) -> None:
    tree = Tree.build([Entry("big", Kind.FILE, 0o644, digest="a" * 64, size=1 << 32)])
    with pytest.raises(FieldOverflowError) as raised:
        write_cpio(tree, ContentStore(tmp_path), io.BytesIO(), 0)
    assert str(raised.value) == "cpio: 'big': file size 4294967296 does not fit the newc header (at most 4294967295)"


# ---- 5. cut tarballs, 12. huge headers, 13. NUL bytes: the importer refuses them -------------


def load(data: bytes, tmp_path: Path) -> Tree:
    return import_tar(io.BytesIO(data), ContentStore(tmp_path / "cas"), "tarball 'evil.tar'")


def _three_members() -> bytes:
    return make_tar([("a", b"first\n", "file"), ("b", b"second\n", "file"), ("c", b"third\n", "file")])


def test_a_tar_cut_at_a_block_boundary_is_refused(tmp_path: Path) -> None:
    data = _three_members()
    assert data[2048 + 257:2048 + 262] == b"ustar" and data[2048:2049] == b"c"  # c's header starts at 2048
    with pytest.raises(UnsafeArchiveError) as raised:
        load(data[:2048], tmp_path)
    assert str(raised.value) == ("tarball 'evil.tar': the archive is truncated: it ends after member 'b' "
                                 "without the end-of-archive marker")


def test_a_corrupt_header_inside_a_tar_is_refused(tmp_path: Path) -> None:
    data = bytearray(_three_members())
    data[1024] = ord("B")  # b's name, so its header checksum no longer matches
    with pytest.raises(UnsafeArchiveError) as raised:
        load(bytes(data), tmp_path)
    assert str(raised.value) == "tarball 'evil.tar': not a readable tar archive (bad checksum)"


def test_a_tar_cut_after_its_end_of_archive_marker_loses_nothing(tmp_path: Path) -> None:
    data = _three_members()
    tree = load(data[: 3072 + 512], tmp_path)  # the members, then one zero block
    assert [e.path for e in tree.entries] == ["a", "b", "c"]


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "zstd"])
def test_a_compressed_tar_cut_short_is_refused(kind: str, tmp_path: Path) -> None:
    compressed = COMPRESSORS[kind](_three_members())
    with pytest.raises(UnsafeArchiveError) as raised:
        load(compressed[:-4], tmp_path)  # the tar inside is whole: only the stream's end is missing
    assert str(raised.value) == f"tarball 'evil.tar': the archive is truncated (the {kind} stream ends early)"


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "zstd"])
def test_a_compressed_tar_imports_whole(kind: str, tmp_path: Path) -> None:
    tree = load(COMPRESSORS[kind](_three_members()), tmp_path)
    assert [e.path for e in tree.entries] == ["a", "b", "c"]


def test_a_corrupt_xz_tar_is_refused(tmp_path: Path) -> None:
    compressed = bytearray(COMPRESSORS["xz"](_three_members()))
    compressed[len(compressed) // 2] ^= 0xFF
    with pytest.raises(UnsafeArchiveError) as raised:
        load(bytes(compressed), tmp_path)
    assert str(raised.value) == "tarball 'evil.tar': the xz data is corrupt (Corrupt input data)"


@pytest.mark.parametrize(
    ("kind", "name", "what"),
    [(tarfile.XHDTYPE, "././@PaxHeader", "pax"), (tarfile.GNUTYPE_LONGNAME, "././@LongLink", "GNU long name")],
)
def test_a_huge_extended_header_is_refused_before_it_is_read(kind: bytes, name: str, what: str,
                                                             tmp_path: Path) -> None:
    header = tarfile.TarInfo(name)
    header.type, header.size = kind, 600 << 20
    source = io.BytesIO(header.tobuf(tarfile.GNU_FORMAT) + b"1 x=y\n" * (3 << 20))
    with pytest.raises(UnsafeArchiveError) as raised:
        import_tar(source, ContentStore(tmp_path), "tarball 'evil.tar'")
    assert str(raised.value) == (f"tarball 'evil.tar': member '{name}': its {what} header is 629145600 bytes, "
                                 "more than the 1048576 mk accepts")
    assert source.tell() < 64 << 10


def test_a_member_name_with_a_nul_byte_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("placeholder")
        info.pax_headers = {"path": "etc/x\0y"}
        archive.addfile(info)
    with pytest.raises(UnsafeArchiveError) as raised:
        load(buffer.getvalue(), tmp_path)
    assert str(raised.value) == "tarball 'evil.tar': member 'etc/x\\x00y': 'etc/x\\x00y' holds a NUL byte"



def test_control_characters_in_a_member_name_are_shown_escaped(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchiveError) as raised:
        load(make_tar([("../\x1b[2Jevil", b"x", "file")]), tmp_path)
    assert str(raised.value) == ("tarball 'evil.tar': member '../\\x1b[2Jevil': '../\\x1b[2Jevil' climbs out of "
                                 "the tree with '..'")


# ---- 13. a bad .deb member is a DebError naming the package and member -------------------------


def _ar_members(deb: bytes) -> dict[str, bytes]:
    members, position = {}, 8
    while position < len(deb):
        name, size = deb[position:position + 16].decode().strip().rstrip("/"), int(deb[position + 48:position + 58])
        members[name] = deb[position + 60:position + 60 + size]
        position += 60 + size + size % 2
    return members


def _ar(members: dict[str, bytes]) -> bytes:
    return b"!<arch>\n" + b"".join(
        f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode() + body + b"\n" * (len(body) % 2)
        for name, body in members.items()
    )


def _read_deb(data: bytes, tmp_path: Path) -> DebContents:
    return read_deb(io.BytesIO(data), ContentStore(tmp_path / "cache"), "app_1.0_amd64.deb")


def test_a_corrupt_xz_data_member_names_the_package_and_member(tmp_path: Path) -> None:
    members = _ar_members(build_deb(Deb("app")))
    data = bytearray(members["data.tar.xz"])
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(DebError) as raised:
        _read_deb(_ar({**members, "data.tar.xz": bytes(data)}), tmp_path)
    assert str(raised.value) == "app_1.0_amd64.deb (data.tar.xz): the xz data is corrupt (Corrupt input data)"


def test_a_zstd_data_member_needing_a_dictionary_names_the_package_and_member(tmp_path: Path) -> None:
    members = _ar_members(build_deb(Deb("app")))
    samples: list[bytes | bytearray | memoryview] = [
        b"sample %d of text that repeats with variation %d\n" % (i, i * 7) * 5 for i in range(200)
    ]
    dictionary = zstandard.train_dictionary(1024, samples)
    tar = lzma.decompress(members.pop("data.tar.xz"))
    data = zstandard.ZstdCompressor(dict_data=dictionary).compress(tar)
    with pytest.raises(DebError) as raised:
        _read_deb(_ar({**members, "data.tar.zst": data}), tmp_path)
    assert str(raised.value) == ("app_1.0_amd64.deb (data.tar.zst): the zstd data is corrupt "
                                 "(zstd decompressor error: Dictionary mismatch)")


def test_a_cut_control_member_names_the_package_and_member(tmp_path: Path) -> None:
    members = _ar_members(build_deb(Deb("app")))
    with pytest.raises(DebError) as raised:
        _read_deb(_ar({**members, "control.tar.gz": members["control.tar.gz"][:-8]}), tmp_path)
    assert str(raised.value) == ("app_1.0_amd64.deb (control.tar.gz): the archive is truncated "
                                 "(the gzip stream ends early)")


def test_a_zstd_package_reads_whole(tmp_path: Path) -> None:
    members = _ar_members(build_deb(Deb("app")))
    tar = lzma.decompress(members.pop("data.tar.xz"))
    contents = _read_deb(_ar({**members, "data.tar.zst": zstandard.ZstdCompressor().compress(tar)}), tmp_path)
    assert contents.paths == ("usr", "usr/share", "usr/share/doc", "usr/share/doc/app", "usr/share/doc/app/README")



def test_a_package_path_with_a_newline_is_refused(tmp_path: Path) -> None:
    """Each path is a line of the package's dpkg file list: a newline would add /etc/shadow to it."""
    deb = build_deb(Deb("app", members=[Member("./usr/bin/x\n/etc/shadow", b"x")]))
    with pytest.raises(DebError) as raised:
        _read_deb(deb, tmp_path)
    assert str(raised.value) == ("app_1.0_amd64.deb: path 'usr/bin/x\\n' holds a newline, which a dpkg file list "
                                 "cannot (dpkg refuses such packages too)")


# ---- 14. a .deb shipping a path twice under merged /usr ----------------------------------------


def test_a_package_shipping_bin_and_usr_bin_differently_is_refused(tmp_path: Path) -> None:
    deb = build_deb(Deb("app", members=[Member("./bin/ls", b"one"), Member("./usr/bin/ls", b"two")]))
    with pytest.raises(DebError) as raised:
        _read_deb(deb, tmp_path)
    assert str(raised.value) == ("app_1.0_amd64.deb: 'bin/ls' and 'usr/bin/ls' are both 'usr/bin/ls' on a "
                                 "merged-/usr system, and they differ")


def test_a_package_shipping_bin_and_usr_bin_folders_merges_them(tmp_path: Path) -> None:
    deb = build_deb(Deb("app", members=[Member("./bin/", kind="dir"), Member("./bin/ls", b"ls"),
                                        Member("./usr/bin/", kind="dir"), Member("./usr/bin/cat", b"cat")]))
    tree = _read_deb(deb, tmp_path).tree
    assert [e.path for e in tree.entries] == ["usr", "usr/bin", "usr/bin/cat", "usr/bin/ls"]


# ---- 7. lockfiles, indices and control files hold Debian names, not paths ----------------------

LOCKED = LockedPackage("app", "1:2.0-1+deb12u1", "amd64", "debian", "pool/main/a/app/app_2.0-1+deb12u1_amd64.deb",
                       "ab" * 32, 100, "app-src")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "../../../../tmp/x", "package '../../../../tmp/x': not a valid Debian package name"),
        ("name", "app\0", "package 'app\\x00': not a valid Debian package name"),
        ("version", "1.0/../../x", "package 'app': version '1.0/../../x' is not a valid Debian version"),
        ("architecture", "amd64/..", "package 'app': architecture 'amd64/..' is not a valid Debian architecture"),
        ("source", "../src", "package 'app': source '../src' is not a valid Debian source"),
        ("path", "/etc/passwd", "package 'app': path '/etc/passwd' is not a relative path inside the archive"),
        ("path", "pool/../../x.deb",
         "package 'app': path 'pool/../../x.deb' is not a relative path inside the archive"),
        ("archive", "elsewhere", "package 'app': archive 'elsewhere' is neither 'debian' nor 'debian-security'"),
    ],
)
def test_a_lockfile_field_outside_debian_grammar_is_refused(field: str, value: str, message: str) -> None:
    document = json.loads(Lockfile("0" * 64, (LOCKED,)).dumps())
    document["packages"][0][field] = value
    with pytest.raises(ValueError) as raised:
        Lockfile.loads(json.dumps(document))
    assert str(raised.value) == message


def test_a_lockfile_of_real_debian_versions_loads() -> None:
    versions = ["1:9.2p1-2+deb12u3", "2.36-9+deb12u7", "3.0.11-1~deb12u2", "5.36.0-7+deb12u1", "1.1+deb12u1", "12"]
    packages = tuple(dataclasses.replace(LOCKED, name=f"p{i}", version=v) for i, v in enumerate(versions))
    assert Lockfile.loads(Lockfile("0" * 64, packages).dumps()).packages == packages


def test_a_build_from_a_lockfile_naming_a_path_writes_nothing_outside(workspace: WorkspaceFactory,
                                                                    tmp_path: Path) -> None:
    repo = app_repo(tmp_path / "repo")
    ws = deb_workspace(workspace, repo)
    assert ws.mk("lock", "//os:base").code == 0
    ws.write("os/base.lock.json", ws.read("os/base.lock.json").replace('"app"', '"../../../../../escaped"'))
    result = ws.mk("build", "//os:base")
    assert result.code == 2, result
    assert ("error: deb_packages //os:base: lockfile 'os/base.lock.json' is unreadable (package "
            "'../../../../../escaped': not a valid Debian package name); run `mk lock //os:base` to rewrite it"
            ) in result.err
    assert not list(tmp_path.rglob("*escaped*"))


def test_an_index_naming_a_path_outside_the_archive_is_refused(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    repo = app_repo(tmp_path / "repo")
    packages = (repo.root / "dists/bookworm/main/binary-amd64/Packages").read_text()
    repo.write_suite("bookworm", packages.replace("Filename: pool/main/a/app/", "Filename: ../../../"))
    result = deb_workspace(workspace, repo).mk("lock", "//os:base")
    assert result.code == 2, result
    assert ("os/BUILD:2:1: error: deb_packages //os:base: suite bookworm: package 'app': path "
            "'../../../app_1.0_amd64.deb' is not a relative path inside the archive") in result.err


def test_a_control_file_naming_a_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DebError) as raised:
        _read_deb(build_deb(Deb("../evil", members=[Member("./usr/share/doc/x", b"x")])), tmp_path)
    assert str(raised.value) == "app_1.0_amd64.deb: control file: package '../evil': not a valid Debian package name"
