"""http_archive against a local HTTP server: a tarball pinned by sha256, unpacked safely."""

from __future__ import annotations

import hashlib
import http.server
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Workspace, WorkspaceFactory, assert_nothing_imported, serving_folder
from debrepo import Member, tar_bytes

HELLO = b"int main(void) { return 0; }\n"
RELEASE = [Member("hello-1.0/", kind="dir"), Member("hello-1.0/hello.c", HELLO),
           Member("hello-1.0/configure", b"#!/bin/sh\n", mode=0o755),
           Member("hello-1.0/doc", kind="symlink", target="README"), Member("hello-1.0/README", b"read me\n")]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over loopback HTTP, and its URL."""
    folder = tmp_path / "www"
    folder.mkdir()
    with serving_folder(folder, _Quiet) as url:
        yield folder, url


def archive_workspace(workspace: WorkspaceFactory, url: str, sha256: str, prefix: str = "hello-1.0") -> Workspace:
    return workspace({"src/BUILD": f'http_archive(name = "hello", url = "{url}", sha256 = "{sha256}", '
                                   f'strip_prefix = "{prefix}")\ntar(name = "hello_tar", src = ":hello")\n'})


def publish(folder: Path, name: str, data: bytes) -> str:
    (folder / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_a_tarball_is_fetched_by_sha256_and_unpacked_below_its_prefix(workspace: WorkspaceFactory,
                                                                       server: tuple[Path, str]) -> None:
    folder, url = server
    sha256 = publish(folder, "hello-1.0.tar.gz", tar_bytes(RELEASE, "gz"))
    ws = archive_workspace(workspace, f"{url}/hello-1.0.tar.gz", sha256)
    ws.build("//src:hello_tar")
    with tarfile.open(ws.root / "mk-out/src/hello_tar.tar") as archive:
        found = {m.name: m for m in archive.getmembers()}
        assert sorted(found) == ["README", "configure", "doc", "hello.c"]
        assert found["configure"].mode == 0o755 and found["doc"].linkname == "README"
        extracted = archive.extractfile("hello.c")
        assert extracted is not None and extracted.read() == HELLO
    # Fixed output: the file is not downloaded again, even from another URL, once it is in the cache.
    (folder / "hello-1.0.tar.gz").rename(folder / "moved.tar.gz")
    ws.write("src/BUILD", ws.read("src/BUILD").replace("/hello-1.0.tar.gz", "/gone.tar.gz"))
    ws.build("//src:hello_tar")


def test_a_wrong_sha256_is_refused_and_names_the_file(workspace: WorkspaceFactory,
                                                      server: tuple[Path, str]) -> None:
    folder, url = server
    data = tar_bytes(RELEASE, "gz")
    publish(folder, "hello-1.0.tar.gz", data)
    wrong = hashlib.sha256(data + b"x").hexdigest()
    ws = archive_workspace(workspace, f"{url}/hello-1.0.tar.gz", wrong)
    failed = ws.mk("build", "//src:hello_tar")
    assert failed.code == 1
    assert (f"src/BUILD:1:1: error: HttpFetch //src:hello failed: {url}/hello-1.0.tar.gz: sha256 is "
            f"{hashlib.sha256(data).hexdigest()}, expected {wrong}: the archive or a proxy is serving the wrong bytes; "
            "nothing was stored\n") in failed.err
    assert_nothing_imported(ws.cache_dir, HELLO)


def test_a_missing_file_is_named(workspace: WorkspaceFactory, server: tuple[Path, str]) -> None:
    _, url = server
    ws = archive_workspace(workspace, f"{url}/nowhere.tar.gz", "0" * 64)
    failed = ws.mk("build", "//src:hello")
    assert failed.code == 1
    assert f"error: HttpFetch //src:hello failed: {url}/nowhere.tar.gz: 404 Not Found\n" in failed.err, failed.err


def _truncated(members: list[Member]) -> bytes:
    whole = tar_bytes(members, "")
    return whole[: len(whole) // 2]


@pytest.mark.parametrize(("archive", "said"), [
    (lambda: tar_bytes([Member("hello-1.0/../../evil", b"owned\n")], "gz"),
     "member 'hello-1.0/../../evil': 'hello-1.0/../../evil' climbs out of the tree with '..'"),
    (lambda: tar_bytes([Member("/etc/evil", b"owned\n")], "gz"),
     "member '/etc/evil': '/etc/evil' is an absolute path"),
    (lambda: tar_bytes([Member("hello-1.0/link", kind="symlink", target="../../etc"),
                        Member("hello-1.0/link/evil", b"owned\n")], "gz"),
     "symlink 'hello-1.0/link' -> '../../etc' escapes the tree"),
    (lambda: _truncated([Member("hello-1.0/big", b"owned\n" * 4000), Member("hello-1.0/more", b"owned\n")]),
     "the archive is truncated"),
    (lambda: tar_bytes([Member("elsewhere/evil", b"owned\n")], "gz"),
     "'elsewhere' is not under strip_prefix 'hello-1.0'"),
])
def test_a_hostile_or_broken_tarball_is_refused(workspace: WorkspaceFactory, server: tuple[Path, str],
                                                archive: object, said: str) -> None:
    folder, url = server
    assert callable(archive)
    sha256 = publish(folder, "hello-1.0.tar.gz", archive())
    ws = archive_workspace(workspace, f"{url}/hello-1.0.tar.gz", sha256)
    failed = ws.mk("build", "//src:hello")
    assert failed.code == 1
    assert "error: Unpack //src:hello failed: " in failed.err and said in failed.err, failed.err
    assert (ws.root / "mk-out/src/hello.tree").exists() is False


@pytest.mark.parametrize(("attrs", "said"), [
    ('url = "ftp://example.invalid/x.tar", sha256 = "' + "0" * 64 + '"',
     "url 'ftp://example.invalid/x.tar' is not an http, https or file URL of a file"),
    ('url = "http://127.0.0.1/x.tar", sha256 = "ABC"', "sha256 'ABC' is not 64 lowercase hex digits"),
    ('url = "http://127.0.0.1/x.tar", sha256 = "' + "0" * 64 + '", strip_prefix = "../x"',
     "strip_prefix '../x' climbs out of the tree with '..'"),
])
def test_bad_attributes_are_named(workspace: WorkspaceFactory, attrs: str, said: str) -> None:
    ws = workspace({"src/BUILD": f'http_archive(name = "hello", {attrs})\n'})
    failed = ws.mk("build", "//src:hello")
    assert failed.code == 2
    assert f"src/BUILD:1:1: error: http_archive //src:hello: {said}" in failed.err, failed.err

