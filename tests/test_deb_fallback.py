"""A locked package that has left the mirror's pool still builds, from a snapshot archive, the
shared remote cache (by its sha256 alone) or an extra mirror, with the same bytes; and when no
place has it, the error lists every place tried. All on loopback, with generated repositories."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Workspace, WorkspaceFactory
from debrepo import Deb, Repo, SnapshotArchive
from remote_servers import Remote, serve_process
from snapshot_server import SnapshotServer, snapshot_serving
from test_deb import serving

from mk.cache.remote import fixed_output_key
from mk.cache.signing import write_key_pair

BUILD = """
deb_packages(name = "base", packages = ["app"], suites = ["bookworm", "bookworm-security"], keyring = "{keyring}")
tar(name = "base_tar", src = ":base")
"""
APP = Deb("app", "1.0", depends="libfoo")
POOL_PATH = "pool/main/a/app/app_1.0_amd64.deb"
OUTPUTS = ("base.tree", "base_tar.tar", "base.spdx.json")
SNAPSHOT = "20240601T060000Z"  # the snapshot taken after the repository's first Release (2024-06-01 00:00)


@dataclass
class Mirror:
    """The repository, served over loopback HTTP: its URL, and every path asked of it."""

    repo: Repo
    url: str
    requested: list[str]

    def move_on(self) -> None:
        """The archive publishes app 1.1 and drops 1.0 from its pool, as Debian does."""
        self.repo.date = self.repo.date.replace(day=20)
        self.repo.replace("bookworm", Deb("app", "1.1", depends="libfoo"), Deb("libfoo", "1.0"))
        self.repo.publish()
        self.repo.deb_path(APP).unlink()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    repo = Repo(tmp_path / "repo")
    repo.add("bookworm", APP, Deb("libfoo", "1.0"))
    repo.add("bookworm-security")
    repo.publish()
    with serving(repo) as (url, handler):
        yield Mirror(repo, url, handler.requested)


@pytest.fixture
def snapshots(tmp_path: Path, mirror: Mirror) -> Iterator[SnapshotServer]:
    """A snapshot archive that took the repository as it was first published."""
    archive = SnapshotArchive(tmp_path / "snapshots")
    archive.take(mirror.repo, SNAPSHOT)
    with snapshot_serving(archive) as server:
        yield server


def locked(workspace: WorkspaceFactory, mirror: Mirror, tmp_path: Path, **env: str) -> tuple[Workspace, dict[str, str]]:
    """A workspace whose lockfile pins app 1.0, and the environment that locked it."""
    ws = workspace({"os/BUILD": BUILD.format(keyring=mirror.repo.keyring)})
    env = {"MK_DEBIAN_MIRROR": mirror.url, **env}
    result = ws.mk("lock", "//os:base", env=env)
    assert result.code == 0, result.err
    assert [(p["name"], p["version"]) for p in json.loads(ws.read("os/base.lock.json"))["packages"]] == [
        ("app", "1.0"), ("libfoo", "1.0")]
    return ws, env


def build_outputs(ws: Workspace, cache: Path, env: dict[str, str]) -> tuple[dict[str, bytes], str]:
    """Build with `cache` as this machine's cache; the outputs' bytes (then mk-out is emptied), and stderr."""
    result = ws.mk("build", "//os:base", "//os:base_tar", env={**env, "MK_CACHE_DIR": str(cache)})
    assert result.code == 0, result.err
    outputs = {name: (ws.root / "mk-out/os" / name).read_bytes() for name in OUTPUTS}
    shutil.rmtree(ws.root / "mk-out")
    return outputs, result.err


def test_lock_records_the_first_snapshot_taken_after_what_it_read(
    workspace: WorkspaceFactory, mirror: Mirror, tmp_path: Path
) -> None:
    archive = SnapshotArchive(tmp_path / "snapshots")
    for time in ("20240531T180000Z", SNAPSHOT, "20240601T120000Z"):
        archive.take(mirror.repo, time)
    with snapshot_serving(archive) as server:
        ws, _ = locked(workspace, mirror, tmp_path, MK_DEBIAN_SNAPSHOT=server.url)
    assert json.loads(ws.read("os/base.lock.json"))["snapshots"] == {"debian": SNAPSHOT, "debian-security": SNAPSHOT}
    assert "/mr/timestamp/?archive=debian" in server.requested
    assert server.url not in ws.read("os/base.lock.json")  # a time, never a URL


def test_a_mirror_that_is_a_snapshot_gives_its_own_time(workspace: WorkspaceFactory, mirror: Mirror,
                                                         snapshots: SnapshotServer, tmp_path: Path) -> None:
    ws = workspace({"os/BUILD": BUILD.format(keyring=mirror.repo.keyring)})
    # Its security archive is the one beside it in the snapshot archive, at the same time.
    result = ws.mk("lock", "//os:base", env={"MK_DEBIAN_MIRROR": f"{snapshots.url}/archive/debian/{SNAPSHOT}"})
    assert result.code == 0, result.err
    assert json.loads(ws.read("os/base.lock.json"))["snapshots"] == {"debian": SNAPSHOT, "debian-security": SNAPSHOT}
    assert f"/archive/debian-security/{SNAPSHOT}/dists/bookworm-security/InRelease" in snapshots.requested


@pytest.mark.parametrize("answer", [None, b'{"result": {"debian": ["yesterday"]}}', b"<html>busy</html>"])
def test_no_snapshot_of_the_state_read_leaves_no_time_and_says_why(
    workspace: WorkspaceFactory, mirror: Mirror, tmp_path: Path, answer: bytes | None
) -> None:
    archive = SnapshotArchive(tmp_path / "snapshots")
    archive.take(mirror.repo, "20240531T180000Z")  # taken before the Release file the lock reads
    ws = workspace({"os/BUILD": BUILD.format(keyring=mirror.repo.keyring)})
    with snapshot_serving(archive) as server:
        server.answer = answer
        result = ws.mk("lock", "//os:base", env={"MK_DEBIAN_MIRROR": mirror.url, "MK_DEBIAN_SNAPSHOT": server.url})
    assert result.code == 0, result.err  # the lock itself goes on
    assert "snapshots" not in json.loads(ws.read("os/base.lock.json"))
    if answer is None:
        assert ("mk lock: note: no snapshot of the 'debian' archive holds what was resolved yet (it was published at "
                "2024-06-01 00:00 UTC); `mk lock` records one when run again later") in result.err
    else:
        assert (f"mk lock: note: no snapshot time for the 'debian' archive: {server.url}/mr/timestamp/?archive=debian: "
                "not a list of snapshot times") in result.err


def test_a_package_gone_from_the_mirror_is_fetched_from_the_snapshot(
    workspace: WorkspaceFactory, mirror: Mirror, snapshots: SnapshotServer, tmp_path: Path
) -> None:
    ws, env = locked(workspace, mirror, tmp_path, MK_DEBIAN_SNAPSHOT=snapshots.url)
    reference, _ = build_outputs(ws, tmp_path / "first-machine", env)
    mirror.move_on()
    mirror.requested.clear()
    outputs, _ = build_outputs(ws, tmp_path / "fresh-machine", env)
    assert outputs == reference
    assert f"/{POOL_PATH}" in mirror.requested  # asked first, and gone (404)
    assert f"/archive/debian/{SNAPSHOT}/{POOL_PATH}" in snapshots.requested


def test_a_package_gone_from_the_mirror_is_fetched_from_the_remote_cache_by_its_sha256(
    workspace: WorkspaceFactory, mirror: Mirror, tmp_path: Path
) -> None:
    key_file, _, public = write_key_pair(tmp_path / "ci")
    with serve_process(tmp_path / "served") as remote:
        ws, env = locked(workspace, mirror, tmp_path)
        ci = {**env, "MK_REMOTE_CACHE": remote.url, "MK_SIGNING_KEY": str(key_file), "MK_TRUSTED_KEYS": public.line()}
        reference, _ = build_outputs(ws, tmp_path / "ci", ci)
        sha256 = {p["name"]: p["sha256"] for p in json.loads(ws.read("os/base.lock.json"))["packages"]}
        pinned = {fixed_output_key(s) for s in sha256.values()}
        assert pinned <= remote.names("ac")  # CI kept every package it fetched, by sha256
        # mk changes, and with it every action key: only what was kept by sha256 is left to find.
        drop_results_except(remote, pinned)
        mirror.move_on()
        mirror.requested.clear()
        laptop = {**env, "MK_REMOTE_CACHE": remote.url, "MK_TRUSTED_KEYS": public.line()}
        outputs, err = build_outputs(ws, tmp_path / "laptop", laptop)
    assert outputs == reference
    assert not [p for p in mirror.requested if p.endswith(".deb")]  # the remote cache came before the mirror
    assert "warning" not in err, err


def drop_results_except(remote: Remote, kept: set[str]) -> None:
    for name in remote.names("ac") - kept:
        remote.file("ac", name).unlink()


def test_a_package_gone_from_the_mirror_is_fetched_from_an_extra_mirror(
    workspace: WorkspaceFactory, mirror: Mirror, tmp_path: Path
) -> None:
    ws, env = locked(workspace, mirror, tmp_path)
    reference, _ = build_outputs(ws, tmp_path / "first-machine", env)
    kept = shutil.copytree(mirror.repo.root, tmp_path / "old-copy")
    mirror.move_on()
    outputs, _ = build_outputs(ws, tmp_path / "fresh-machine", {**env, "MK_DEBIAN_EXTRA_MIRRORS": kept.as_uri()})
    assert outputs == reference


def test_with_no_place_left_the_error_lists_every_place_tried(
    workspace: WorkspaceFactory, mirror: Mirror, tmp_path: Path
) -> None:
    _, _, public = write_key_pair(tmp_path / "ci")
    with serve_process(tmp_path / "empty-cache") as remote, \
            snapshot_serving(SnapshotArchive(tmp_path / "empty-snapshots")) as snapshots:
        ws, env = locked(workspace, mirror, tmp_path)
        lock = json.loads(ws.read("os/base.lock.json"))
        lock["snapshots"] = {"debian": SNAPSHOT}  # a time the (empty) snapshot archive has nothing for
        ws.write("os/base.lock.json", json.dumps(lock))
        sha256 = next(p["sha256"] for p in lock["packages"] if p["name"] == "app")
        mirror.move_on()
        extra = tmp_path / "extra"
        extra.mkdir()
        result = ws.mk("build", "//os:base", env={
            **env, "MK_REMOTE_CACHE": remote.url, "MK_TRUSTED_KEYS": public.line(),
            "MK_DEBIAN_SNAPSHOT": snapshots.url, "MK_DEBIAN_EXTRA_MIRRORS": extra.as_uri()})
    assert result.code == 1
    assert (f"error: DebUnpack //os:base failed: app_1.0_amd64.deb (sha256 {sha256}) is in none of the places tried:\n"
            "  - the local store: not there\n"
            f"  - the remote cache {remote.url}: has no copy\n"
            f"  - the mirror: {mirror.url}/{POOL_PATH}: 404 Not Found\n"
            f"  - the snapshot archive: {snapshots.url}/archive/debian/{SNAPSHOT}/{POOL_PATH}: 404 Not Found\n"
            f"  - an extra mirror: {extra.as_uri()}/{POOL_PATH}: no such file\n"
            "(this version has left the mirror: a snapshot archive (debian_snapshot) or a remote cache that kept it "
            "still has it; `mk lock --update` moves to the versions the archive has now)\n") in result.err
    assert not (ws.root / "mk-out/os/base.tree").exists()


def test_unconfigured_places_are_named_with_what_would_configure_them(
    workspace: WorkspaceFactory, mirror: Mirror, tmp_path: Path
) -> None:
    ws, env = locked(workspace, mirror, tmp_path)
    mirror.move_on()
    result = ws.mk("build", "//os:base", env=env)
    assert result.code == 1
    assert ("  - the remote cache: none configured\n"
            f"  - the mirror: {mirror.url}/{POOL_PATH}: 404 Not Found\n"
            "  - the snapshot archive: none configured (debian_snapshot, MK_DEBIAN_SNAPSHOT)\n"
            "  - extra mirrors: none configured (debian_extra_mirrors, MK_DEBIAN_EXTRA_MIRRORS)\n") in result.err


def test_a_place_serving_other_bytes_is_passed_over(workspace: WorkspaceFactory, mirror: Mirror,
                                                    snapshots: SnapshotServer, tmp_path: Path) -> None:
    ws, env = locked(workspace, mirror, tmp_path, MK_DEBIAN_SNAPSHOT=snapshots.url)
    reference, _ = build_outputs(ws, tmp_path / "first-machine", env)
    mirror.repo.deb_path(APP).write_bytes(b"not the package the lockfile pins")
    outputs, _ = build_outputs(ws, tmp_path / "fresh-machine", env)
    assert outputs == reference  # the mirror's bytes were refused; the snapshot's were the right ones
    assert f"/archive/debian/{SNAPSHOT}/{POOL_PATH}" in snapshots.requested


def test_a_lockfile_with_a_malformed_snapshot_time_is_refused(workspace: WorkspaceFactory, mirror: Mirror,
                                                              tmp_path: Path) -> None:
    ws, env = locked(workspace, mirror, tmp_path)
    lock = json.loads(ws.read("os/base.lock.json"))
    lock["snapshots"] = {"debian": "../../../etc"}
    ws.write("os/base.lock.json", json.dumps(lock))
    result = ws.mk("build", "//os:base", env=env)
    assert result.code == 2
    assert ("lockfile 'os/base.lock.json' is unreadable (snapshots: debian: not a time of the form 20240601T000000Z: "
            "'../../../etc')") in result.err

