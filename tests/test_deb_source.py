"""deb_source against a generated, signed repository with a Sources index: `mk lock` pins the
source package, the build fetches its files by sha256 and dpkg-source (the host's, as the
workspace's toolchain is "host") unpacks them with debian/patches applied."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from conftest import Workspace, WorkspaceFactory, require, run_from_tar
from debrepo import Repo, SourcePackage

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello, world"); return 0; }\n'
MAKEFILE = "hello: hello.c\n\tgcc -o $@ $<\n"
PATCH = """Description: a friendlier greeting
--- a/hello.c
+++ b/hello.c
@@ -1,2 +1,2 @@
 #include <stdio.h>
-int main(void) { puts("hello, world"); return 0; }
+int main(void) { puts("hello from a patched source package"); return 0; }
"""
BUILD = """
deb_source(name = "hello_source", package = "{package}", suites = ["bookworm", "bookworm-security"],
           keyring = "{keyring}")
package(name = "hello", src = ":hello_source", build = "make", install = "install -D hello $DESTDIR/usr/bin/hello")
tar(name = "source_tar", src = ":hello_source")
tar(name = "hello_tar", src = ":hello")
"""


def source(version: str, patches: dict[str, str] | None = None) -> SourcePackage:
    return SourcePackage("hello", version, {"hello.c": HELLO_C.encode(), "Makefile": MAKEFILE.encode()},
                         {"greeting.patch": PATCH} if patches is None else patches)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    require("dpkg-source")
    made = Repo(tmp_path / "repo")
    made.add_source("bookworm", source("1.0-1"))
    made.add_source("bookworm-security", source("1.0-2"))
    made.publish()
    return made


def source_workspace(workspace: WorkspaceFactory, repo: Repo, package: str = "hello", name: str = "ws") -> Workspace:
    build = BUILD.format(package=package, keyring=repo.keyring)
    return workspace({"src/BUILD": build}, name=name, toml=f'debian_mirror = "{repo.url}"\n')


def test_lock_pins_the_newest_source_package_by_the_sha256_of_each_file(workspace: WorkspaceFactory,
                                                                         repo: Repo) -> None:
    ws = source_workspace(workspace, repo)
    result = ws.mk("lock", "//src:hello_source")
    assert result.code == 0, result.err
    assert result.out == "src/hello_source.lock.json: 3 files (written)\n"
    text = ws.read("src/hello_source.lock.json")
    locked = json.loads(text)["source"]
    assert (locked["name"], locked["version"], locked["archive"], locked["directory"]) == \
        ("hello", "1.0-2", "debian-security", "pool/main/h/hello")
    published = [repo.root / "pool/main/h/hello" / n for n in
                 ("hello_1.0-2.dsc", "hello_1.0.orig.tar.gz", "hello_1.0-2.debian.tar.xz")]
    assert locked["files"] == [{"name": f.name, "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                                "size": f.stat().st_size} for f in published]
    assert repo.url not in text and "file:" not in text
    assert ws.mk("lock", "//src:hello_source").out == "src/hello_source.lock.json: 3 files (unchanged)\n"


def test_a_newer_source_is_reported_by_check_kept_by_lock_and_taken_by_update(workspace: WorkspaceFactory,
                                                                              repo: Repo) -> None:
    ws = source_workspace(workspace, repo)
    assert ws.mk("lock", "//src:hello_source").code == 0
    written = ws.read("src/hello_source.lock.json")
    repo.add_source("bookworm-security", source("1.0-3"))
    repo.publish()

    result = ws.mk("lock", "--check", "//src:hello_source")
    assert result.code == 1, result.err  # a security update is pending
    assert result.out == ("src/hello_source.lock.json: 1 change (1 security update); nothing written\n"
                          "  hello 1.0-2 -> 1.0-3 (security)\n")
    assert ws.mk("lock", "//src:hello_source").out == "src/hello_source.lock.json: 3 files (unchanged)\n"
    assert ws.read("src/hello_source.lock.json") == written

    result = ws.mk("lock", "--update", "//src:hello_source")
    assert result.out == "src/hello_source.lock.json: 3 files (written)\n  hello 1.0-2 -> 1.0-3 (security)\n"
    assert json.loads(ws.read("src/hello_source.lock.json"))["source"]["version"] == "1.0-3"
    assert ws.mk("lock", "--check", "//src:hello_source").code == 0


def test_the_source_is_unpacked_with_its_patches_applied_and_builds(workspace: WorkspaceFactory, repo: Repo,
                                                                     tmp_path: Path) -> None:
    require("gcc")
    ws = source_workspace(workspace, repo)
    assert ws.mk("lock", "//src:hello_source").code == 0
    ws.build("//src:source_tar", "//src:hello_tar")
    with tarfile.open(ws.root / "mk-out/src/source_tar.tar") as archive:
        names = set(archive.getnames())
        patched = archive.extractfile("hello.c")
        assert patched is not None and b"hello from a patched source package" in patched.read()
    assert {"Makefile", "debian/changelog", "debian/patches/series", "debian/patches/greeting.patch"} <= names
    assert not any(n == ".pc" or n.startswith(".pc/") for n in names)  # quilt's state is dropped
    assert run_from_tar(ws.root / "mk-out/src/hello_tar.tar", "usr/bin/hello", tmp_path) == \
        "hello from a patched source package\n"
    log = ws.mk("log", "//src:hello_source")
    assert "==> DebSourceUnpack //src:hello_source (executed): src/hello_source.tree\n" in log.out
    assert "dpkg-source: info: applying greeting.patch\n" in log.out


def test_a_file_whose_sha256_differs_is_refused_and_named(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = source_workspace(workspace, repo)
    assert ws.mk("lock", "//src:hello_source").code == 0
    orig = repo.root / "pool/main/h/hello/hello_1.0.orig.tar.gz"
    data = bytearray(orig.read_bytes())
    data[-1] ^= 0xFF  # the same size, other bytes
    orig.write_bytes(bytes(data))
    failed = ws.mk("build", "//src:hello_source")
    assert failed.code == 1
    expected = json.loads(ws.read("src/hello_source.lock.json"))["source"]["files"][1]["sha256"]
    assert "error: DebSourceFetch //src:hello_source failed: hello_1.0.orig.tar.gz (sha256 " in failed.err
    assert f"the mirror: {repo.url}/pool/main/h/hello/hello_1.0.orig.tar.gz: sha256 is " in failed.err
    assert f", expected {expected}: the archive or a proxy is serving the wrong bytes; nothing was stored" \
        in failed.err


def test_a_patch_that_does_not_apply_fails_naming_the_target_and_the_patch(workspace: WorkspaceFactory,
                                                                            tmp_path: Path) -> None:
    require("dpkg-source")
    repo = Repo(tmp_path / "broken")
    repo.add_source("bookworm", source("1.0-1", {"greeting.patch": PATCH.replace("hello, world", "goodbye")}))
    repo.add_source("bookworm-security")
    repo.publish()
    ws = source_workspace(workspace, repo)
    assert ws.mk("lock", "//src:hello_source").code == 0
    failed = ws.mk("build", "//src:hello_source")
    assert failed.code == 1
    assert "src/BUILD:2:1: error: DebSourceUnpack //src:hello_source failed (exit code" in failed.err
    assert "  | dpkg-source: info: applying greeting.patch\n" in failed.err
    assert "  | Hunk #1 FAILED at 1.\n" in failed.err
    assert "  | dpkg-source: error: LC_ALL=C patch " in failed.err


def test_a_pinned_version_the_indices_lack_lists_those_they_have(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = source_workspace(workspace, repo, package="hello=0.9-1")
    failed = ws.mk("lock", "//src:hello_source")
    assert failed.code == 2
    assert ("src/BUILD:2:1: error: deb_source //src:hello_source: version 0.9-1 of source package 'hello' is not in "
            "the indices; available: 1.0-2, 1.0-1\n") in failed.err
    misspelt = source_workspace(workspace, repo, package="helo", name="misspelt")
    assert "source package 'helo' is not in the Sources indices (did you mean 'hello'?)" in \
        misspelt.mk("lock", "//src:hello_source").err


def test_a_changed_package_makes_the_lockfile_stale(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = source_workspace(workspace, repo)
    assert ws.mk("build", "//src:hello_source").err.endswith(
        "error: deb_source //src:hello_source: no lockfile 'src/hello_source.lock.json'; run `mk lock "
        "//src:hello_source` to create it\n")
    assert ws.mk("lock", "//src:hello_source").code == 0
    ws.write("src/BUILD", ws.read("src/BUILD").replace('package = "hello"', 'package = "hello=1.0-1"'))
    failed = ws.mk("build", "//src:hello_source")
    assert failed.code == 2
    assert ("deb_source //src:hello_source: lockfile 'src/hello_source.lock.json' is stale (the package, suites or "
            "components changed since it was written); run `mk lock //src:hello_source`") in failed.err
