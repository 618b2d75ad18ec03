"""deb_packages end to end against generated, signed repositories (file:// and loopback HTTP)."""

from __future__ import annotations

import contextlib
import http.server
import json
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from conftest import (
    MIRROR_SECONDS,
    Workspace,
    WorkspaceFactory,
    assert_nothing_imported,
    parse_summary,
    serving_folder,
)
from debrepo import Deb, Member, Repo, app_repo, build_deb

from mk.cache.tree import Kind, Tree

BUILD = """
deb_packages(
    name = "base",
    packages = ["app"],
    suites = ["bookworm", "bookworm-security"],
    keyring = "{keyring}",
    alternatives = {{"/usr/bin/editor": "/usr/bin/app"}},
)
tar(name = "base_tar", src = ":base")
"""


def standard_debs() -> list[Deb]:
    return [
        Deb("app", "2.0", depends="libfoo (>= 1.1) | libbar, mail-transport-agent, perl:any", source="app-src",
            members=[Member("./bin/", kind="dir"), Member("./bin/app", b"#!/bin/sh\necho app\n", mode=0o755),
                     Member("./usr/share/doc/app/README", b"app\n"),
                     Member("./lib/x86_64-linux-gnu/", kind="dir"),
                     Member("./lib/x86_64-linux-gnu/libapp.so.1", b"\x7fELF"),
                     Member("./lib/x86_64-linux-gnu/libapp.so", kind="symlink", target="libapp.so.1")]),
        Deb("libfoo", "1.0"),
        Deb("libbar", "1.0"),
        Deb("postfix", "3.7", provides="mail-transport-agent", pre_depends="libc6"),
        Deb("libc6", "2.36", depends="libc6"),  # depends on itself: a cycle
        Deb("perl", "5.36", arch="amd64", depends="app"),  # a cycle through app
    ]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    repo = Repo(tmp_path_factory.mktemp("debian") / "repo")
    repo.add("bookworm", *standard_debs())
    repo.add("bookworm-security", Deb("libfoo", "1.1+deb12u1"))
    repo.publish()
    return repo


def deb_workspace(workspace: WorkspaceFactory, repo: Repo, name: str = "ws") -> Workspace:
    return workspace({"os/BUILD": BUILD.format(keyring=repo.keyring)}, name=name,
                     toml=f'debian_mirror = "{repo.url}"\n')


def test_lock_resolves_and_writes_a_stable_lockfile(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = deb_workspace(workspace, repo)
    result = ws.mk("lock", "//os:base")
    assert result.code == 0, result
    assert result.out.strip() == "os/base.lock.json: 5 packages (written)"
    first = ws.read("os/base.lock.json")
    lock = json.loads(first)
    # libfoo from the security suite satisfies "libfoo (>= 1.1) | libbar"; postfix provides the MTA.
    assert [p["name"] for p in lock["packages"]] == ["app", "libc6", "libfoo", "perl", "postfix"]
    by_name = {p["name"]: p for p in lock["packages"]}
    assert by_name["libfoo"]["version"] == "1.1+deb12u1" and by_name["libfoo"]["archive"] == "debian-security"
    assert by_name["app"]["path"] == "pool/main/a/app/app_2.0_amd64.deb"
    assert repo.url not in first and "file:" not in first  # no mirror is ever written down
    assert ws.mk("lock", "//os:base").out.strip() == "os/base.lock.json: 5 packages (unchanged)"
    assert ws.read("os/base.lock.json") == first


def test_build_unpacks_into_a_merged_usr_tree_with_a_dpkg_database(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = deb_workspace(workspace, repo)
    assert ws.mk("lock", "//os:base").code == 0
    result = ws.build("//os:base", "//os:base_tar")
    summary = parse_summary(result.out)
    assert (summary.executed, summary.actions) == (8, 8)  # a cold cache: everything ran (DebUnpack per package)
    tree = Tree.decode((ws.root / "mk-out/os/base.tree").read_bytes())
    entries = {e.path: e for e in tree.entries}
    assert entries["bin"].kind is Kind.SYMLINK and entries["bin"].target == "usr/bin"
    assert entries["lib"].target == "usr/lib"
    assert entries["usr/bin/app"].mode == 0o755
    assert entries["usr/lib/x86_64-linux-gnu/libapp.so"].target == "libapp.so.1"
    assert entries["usr/bin/editor"].target == "/etc/alternatives/editor"
    assert entries["etc/alternatives/editor"].target == "/usr/bin/app"
    status = _blob(ws, entries["var/lib/dpkg/status"].digest)
    assert status.count("Status: install ok installed") == 5
    assert "Package: app\nStatus: install ok installed\nSource: app-src\nVersion: 2.0\n" in status
    # dpkg's list of the package's files names them as the package does (/bin/app), not as merged.
    assert _blob(ws, entries["var/lib/dpkg/info/app.list"].digest) == (
        "/.\n/bin\n/bin/app\n/lib\n/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu/libapp.so\n"
        "/lib/x86_64-linux-gnu/libapp.so.1\n/usr\n/usr/share\n/usr/share/doc\n/usr/share/doc/app\n"
        "/usr/share/doc/app/README\n"
    )
    sbom = json.loads(ws.read("mk-out/os/base.spdx.json"))
    assert sbom["spdxVersion"] == "SPDX-2.3" and sbom["creationInfo"]["created"] == "1970-01-01T00:00:00Z"
    app = next(p for p in sbom["packages"] if p["name"] == "app")
    assert app["versionInfo"] == "2.0" and app["sourceInfo"] == "built package from: app-src"
    assert app["checksums"][0]["checksumValue"] == json.loads(ws.read("os/base.lock.json"))["packages"][0]["sha256"]


def _blob(ws: Workspace, digest: str) -> str:
    from mk.cache.cas import ContentStore

    return ContentStore(ws.cache_dir).read_bytes(digest).decode()


def test_a_stale_or_missing_lockfile_stops_the_build(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = deb_workspace(workspace, repo)
    result = ws.mk("build", "//os:base")
    assert result.code == 2
    assert ("error: deb_packages //os:base: no lockfile 'os/base.lock.json'; "
            "run `mk lock //os:base` to create it") in result.err
    ws.mk("lock", "//os:base")
    ws.write("os/BUILD", BUILD.format(keyring=repo.keyring).replace('["app"]', '["app", "libbar"]'))
    result = ws.mk("build", "//os:base")
    assert result.code == 2
    assert ("os/BUILD:2:1: error: deb_packages //os:base: lockfile 'os/base.lock.json' is stale (the package list, "
            "suites or excludes changed since it was written); run `mk lock //os:base`") in result.err


def test_wrong_sha256_stores_nothing(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = deb_workspace(workspace, repo)
    ws.mk("lock", "//os:base")
    lock = json.loads(ws.read("os/base.lock.json"))
    lock["packages"][0]["sha256"] = "ab" * 32
    ws.write("os/base.lock.json", json.dumps(lock))
    result = ws.mk("build", "//os:base")
    assert result.code == 1
    real = repo.deb_path(standard_debs()[0])
    assert "app_2.0_amd64.deb: sha256 is " in result.err
    expected = f", expected {'ab' * 32}: the archive or a proxy is serving the wrong bytes; nothing was stored"
    assert expected in result.err
    real_digest = blake3.blake3(real.read_bytes()).hexdigest()
    assert not any(p.name == real_digest for p in (ws.cache_dir / "cas").rglob("*"))


def test_unsatisfiable_and_badly_signed_archives_fail_the_lock(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "bad")
    repo.add("bookworm", Deb("app", depends="libgone (>= 2)"))
    repo.add("bookworm-security")
    repo.publish()
    ws = deb_workspace(workspace, repo)
    result = ws.mk("lock", "//os:base")
    assert result.code == 2
    assert ("os/BUILD:2:1: error: deb_packages //os:base: cannot install app 1.0: it depends on 'libgone (>= 2)', "
            "which no package in the suites "
            "provides for architecture amd64 (add it to 'excludes' if the image does not need it)") in result.err
    inrelease = repo.root / "dists/bookworm/InRelease"
    inrelease.write_text(inrelease.read_text().replace("Suite: bookworm", "Suite: evil"))
    result = ws.mk("lock", "//os:base")
    assert result.code == 2
    assert ("os/BUILD:2:1: error: deb_packages //os:base: suite bookworm: the Release file's signature does not "
            "verify against") in result.err


def test_tampered_index_is_refused(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    repo = app_repo(tmp_path / "tampered")
    listed = (repo.root / "dists/bookworm/main/binary-amd64/Packages.gz").stat().st_size
    for name in ("Packages", "Packages.gz"):
        (repo.root / "dists/bookworm/main/binary-amd64" / name).write_bytes(b"Package: evil\n")
    result = deb_workspace(workspace, repo).mk("lock", "//os:base")
    assert result.code == 2
    assert (f"main/binary-amd64/Packages.gz: got 14 bytes, {listed - 14} fewer than the {listed} expected"
            in result.err)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([Member("./../../etc/evil", b"x")],
         "member './../../etc/evil': './../../etc/evil' climbs out of the tree with '..'"),
        ([Member("./usr/lib/escape", kind="symlink", target="/"), Member("./usr/lib/escape/etc/shadow", b"x")],
         "member './usr/lib/escape/etc/shadow' lies under the symlink 'usr/lib/escape'"),
        ([Member("./usr/lib/up", kind="symlink", target="../../../../etc")], "escapes the tree"),
    ],
)
def test_malicious_packages_are_refused(workspace: WorkspaceFactory, tmp_path: Path, members: list[Member],
                                        message: str) -> None:
    repo = Repo(tmp_path / "evil")
    repo.add("bookworm", Deb("app", members=members))
    repo.add("bookworm-security")
    repo.publish()
    ws = deb_workspace(workspace, repo)
    assert ws.mk("lock", "//os:base").code == 0
    result = ws.mk("build", "//os:base")
    assert result.code == 1, result
    assert "error: DebUnpack //os:base failed: app_1.0_amd64.deb (data.tar.xz): " in result.err
    assert message in result.err
    assert_nothing_imported(ws.cache_dir, b"x")
    assert not (ws.root / "mk-out/os/base.tree").exists()


def truncated_repo(tmp_path: Path) -> tuple[Repo, Path, int]:
    """A repository whose app .deb has lost its last 200 bytes: (repo, the .deb, its full size)."""
    repo = app_repo(tmp_path / "short")
    deb = repo.deb_path(Deb("app"))
    size = deb.stat().st_size
    deb.write_bytes(deb.read_bytes()[:-200])
    return repo, deb, size


def test_truncated_download_is_refused(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    repo, deb, size = truncated_repo(tmp_path)  # the index still promises the full size
    ws = deb_workspace(workspace, repo)
    assert ws.mk("lock", "//os:base").code == 0
    result = ws.mk("build", "//os:base")
    assert result.code == 1
    assert "error: DebUnpack //os:base failed: app_1.0_amd64.deb (sha256 " in result.err
    assert (f"  - the mirror: {deb.as_uri()}: got {size - 200} bytes, 200 fewer than the {size} expected: the "
            "download was cut short, or the file is not the one listed (gave up after 3 attempts)\n") in result.err


def test_truncated_deb_that_the_index_describes_is_refused_when_read(
    workspace: WorkspaceFactory, tmp_path: Path
) -> None:
    repo, deb, _ = truncated_repo(tmp_path)
    import hashlib

    data = deb.read_bytes()  # the index is rewritten to describe the truncated file: it downloads fine
    packages = (repo.root / "dists/bookworm/main/binary-amd64/Packages").read_text()
    fixed = "\n".join(
        line if not line.startswith(("Size:", "SHA256:")) else
        (f"Size: {len(data)}" if line.startswith("Size:") else f"SHA256: {hashlib.sha256(data).hexdigest()}")
        for line in packages.splitlines()
    ) + "\n"
    repo.write_suite("bookworm", fixed)
    ws = deb_workspace(workspace, repo)
    assert ws.mk("lock", "//os:base").code == 0
    result = ws.mk("build", "//os:base")
    assert result.code == 1
    assert "error: DebUnpack //os:base failed: app_1.0_amd64.deb: the file is truncated\n" in result.err


# ---- over HTTP -------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    drop_debs = False
    requested: list[str]  # every GET's path, in order (each `serving` gives its handler its own list)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requested.append(self.path)
        if self.drop_debs and self.path.endswith(".deb"):
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        super().do_GET()


@contextlib.contextmanager
def serving(repo: Repo) -> Iterator[tuple[str, type[_Handler]]]:
    """The repository over loopback HTTP: its base URL, and the handler class that serves it."""
    handler: type[_Handler] = type("Handler", (_Handler,), {"requested": []})
    with serving_folder(repo.root, handler) as url:
        yield url, handler


@pytest.fixture
def http_repo(repo: Repo) -> Iterator[tuple[str, type[_Handler]]]:
    with serving(repo) as served:
        yield served


def test_http_mirror_and_a_server_that_drops_the_connection(
    workspace: WorkspaceFactory, repo: Repo, http_repo: tuple[str, type[_Handler]]
) -> None:
    url, handler = http_repo
    ws = workspace({"os/BUILD": BUILD.format(keyring=repo.keyring)}, name="http")
    env = {"MK_DEBIAN_MIRROR": url}
    assert ws.mk("lock", "//os:base", env=env).code == 0
    handler.drop_debs = True
    result = ws.mk("build", "//os:base", env=env)
    assert result.code == 1
    assert f"{url}/pool/main/a/app/app_2.0_amd64.deb: connection " in result.err
    assert "(gave up after 3 attempts)" in result.err
    assert not (ws.root / "mk-out/os/base.tree").exists()
    handler.drop_debs = False
    result = ws.mk("build", "//os:base", env=env)
    assert result.code == 0, result.err
    assert (ws.root / "mk-out/os/base.tree").is_file()


def test_build_deb_makes_a_valid_package(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "x.deb"
    path.write_bytes(build_deb(Deb("x", members=[Member("./usr/bin/x", b"x")])))
    listing = subprocess.run(["dpkg-deb", "-c", str(path)], capture_output=True, text=True, check=True).stdout
    assert "./usr/bin/x" in listing


def test_packages_already_in_the_store_are_not_downloaded_again(
    workspace: WorkspaceFactory, repo: Repo, http_repo: tuple[str, type[_Handler]]
) -> None:
    import shutil

    url, handler = http_repo
    ws = workspace({"os/BUILD": BUILD.format(keyring=repo.keyring)}, name="again")
    env = {"MK_DEBIAN_MIRROR": url}
    assert ws.mk("lock", "//os:base", env=env).code == 0
    ws.build("//os:base", env=env)
    shutil.rmtree(ws.cache_dir / "ac")  # a cold action cache over a warm content store
    (ws.root / "mk-out/os/base.tree").unlink()
    handler.drop_debs = True  # any download would now fail
    result = ws.build("//os:base", env=env)
    assert parse_summary(result.out).executed == 7  # every DebUnpack again, none downloading
    assert (ws.root / "mk-out/os/base.tree").is_file()


@pytest.mark.mirror
@pytest.mark.timeout(2 * MIRROR_SECONDS + 60)
def test_real_mirror_openssh_server_and_busybox(workspace: WorkspaceFactory) -> None:
    """Against the Debian archive this machine's apt sources (or MK_DEBIAN_MIRROR) name."""
    ws = workspace({"os/BUILD": 'deb_packages(name = "base", packages = ["openssh-server", "busybox-static"])\n'},
                   name="mirror")
    result = ws.mk("lock", "//os:base", timeout=MIRROR_SECONDS, what="reads the mirror's package indices")
    assert result.code == 0, result.err
    names = {p["name"] for p in json.loads(ws.read("os/base.lock.json"))["packages"]}
    assert {"openssh-server", "busybox-static", "libc6", "libssl3"} <= names
    result = ws.mk("build", "//os:base", timeout=MIRROR_SECONDS, what="downloads the packages from the mirror")
    assert result.code == 0, result.err
    tree = Tree.decode((ws.root / "mk-out/os/base.tree").read_bytes())
    entries = {e.path: e for e in tree.entries}
    assert entries["usr/sbin/sshd"].kind is Kind.FILE and entries["usr/sbin/sshd"].mode == 0o755
    assert entries["usr/bin/busybox"].kind is Kind.FILE
    assert entries["sbin"].target == "usr/sbin"
    status = _blob(ws, entries["var/lib/dpkg/status"].digest)
    assert "Package: openssh-server\nStatus: install ok installed\n" in status


def test_package_tree_and_sbom_are_reproducible(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    import subprocess

    from conftest import MK, mk_env

    outputs = []
    for name, jobs, umask, tz in (("one", "1", 0o022, "UTC"), ("deep/er/two", "2", 0o077, "Asia/Kathmandu")):
        ws = deb_workspace(workspace, repo, name=name)
        assert ws.mk("lock", "//os:base").code == 0
        result = subprocess.run([MK, "build", "-j", jobs, "//os:base", "//os:base_tar"], cwd=ws.root,
                                env=mk_env(tmp_path / f"cache-{jobs}", {"TZ": tz}), umask=umask,
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        outputs.append({p: (ws.root / "mk-out/os" / p).read_bytes()
                        for p in ("base.tree", "base.spdx.json", "base_tar.tar")})
    assert outputs[0] == outputs[1]
