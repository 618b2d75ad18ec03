"""`mk lock` against archives caught part-way through an update: indices fetched by hash where
the archive offers it, and errors that say what happened, where, and what the archive has."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import WorkspaceFactory
from debrepo import Deb, Repo, app_repo
from test_deb import BUILD, deb_workspace, serving

INDEX = "dists/bookworm/main/binary-amd64/Packages.gz"  # the index mk reads: the first compression listed


def updating_repo(tmp_path: Path, by_hash: bool) -> tuple[Repo, bytes]:
    """A mirror that has its next Packages files (app 1.1 beside 1.0) but still the signed Release
    of the last update: (the repository, the index that Release lists)."""
    repo = app_repo(tmp_path / "repo", by_hash=by_hash)
    listed = (repo.root / INDEX).read_bytes()
    repo.add("bookworm", Deb("app", "1.1"))
    repo.publish(release=False)
    assert (repo.root / INDEX).read_bytes() != listed
    return repo, listed


def test_an_archive_part_way_through_an_update_is_read_by_hash(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    repo, _ = updating_repo(tmp_path, by_hash=True)
    ws = deb_workspace(workspace, repo)
    result = ws.mk("lock", "//os:base")
    assert result.code == 0, result.err
    # What the signed Release vouches for (only its by-hash file still holds it), not the newer index.
    assert [(p["name"], p["version"]) for p in json.loads(ws.read("os/base.lock.json"))["packages"]] == [
        ("app", "1.0")]


def test_an_index_larger_than_the_release_says_is_reported_as_a_mirror_mid_update(
    workspace: WorkspaceFactory, tmp_path: Path
) -> None:
    repo, listed = updating_repo(tmp_path, by_hash=False)
    served = (repo.root / INDEX).stat().st_size
    assert served > len(listed)
    result = deb_workspace(workspace, repo).mk("lock", "//os:base")
    assert result.code == 2
    assert (f"os/BUILD:2:1: error: deb_packages //os:base: suite bookworm: {repo.url}/{INDEX}: got {served} bytes, "
            f"{served - len(listed)} more than the {len(listed)} expected: a different file from the one listed; "
            "the mirror may be part-way through an update (its indices no longer match its Release file): "
            "run `mk lock` again in a few minutes\n") in result.err
    assert "truncated" not in result.err


def test_an_index_shorter_than_the_release_says_is_reported_as_such(workspace: WorkspaceFactory,
                                                                    tmp_path: Path) -> None:
    repo = app_repo(tmp_path / "repo")
    index = repo.root / INDEX
    listed = index.stat().st_size
    index.write_bytes(index.read_bytes()[:-10])
    result = deb_workspace(workspace, repo).mk("lock", "//os:base")
    assert result.code == 2
    assert (f"{repo.url}/{INDEX}: got {listed - 10} bytes, 10 fewer than the {listed} expected: the download was "
            "cut short, or the file is not the one listed (gave up after 3 attempts); the mirror may be part-way "
            "through an update") in result.err


@pytest.mark.parametrize(
    ("by_hash", "by_hash_files", "fetched"),
    [
        (True, True, ["by-hash"]),
        (True, False, ["by-hash", "plain"]),  # a mirror whose by-hash files lag behind: the plain path
        (False, True, ["plain"]),  # by-hash files the Release file does not offer are not used
    ],
)
def test_indices_are_fetched_by_hash_where_the_archive_offers_it(
    workspace: WorkspaceFactory, tmp_path: Path, by_hash: bool, by_hash_files: bool, fetched: list[str]
) -> None:
    repo = app_repo(tmp_path / "repo", by_hash=True)
    if not by_hash:
        repo.by_hash = False  # the Release files no longer say Acquire-By-Hash; the by-hash files stay
        repo.write_release("bookworm")
        repo.write_release("bookworm-security")
    expected = []
    for suite in ("bookworm", "bookworm-security"):
        folder = repo.root / f"dists/{suite}/main/binary-amd64"
        if not by_hash_files:
            shutil.rmtree(folder / "by-hash")
        paths = {"by-hash": f"/dists/{suite}/main/binary-amd64/by-hash/SHA256/"
                            + hashlib.sha256((folder / "Packages.gz").read_bytes()).hexdigest(),
                 "plain": f"/dists/{suite}/main/binary-amd64/Packages.gz"}
        expected += [paths[kind] for kind in fetched]
    with serving(repo) as (url, handler):
        ws = workspace({"os/BUILD": BUILD.format(keyring=repo.keyring)})
        result = ws.mk("lock", "//os:base", env={"MK_DEBIAN_MIRROR": url})
    assert result.code == 0, result.err
    assert [path for path in handler.requested if "/binary-amd64/" in path] == expected
    assert json.loads(ws.read("os/base.lock.json"))["packages"][0]["name"] == "app"


def test_a_pinned_version_the_archive_lacks_names_the_target_and_the_versions_it_has(
    workspace: WorkspaceFactory, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    repo.add("bookworm", Deb("app", "1.0"), Deb("libfoo"))
    repo.add("bookworm-security", Deb("app", "1.0+deb12u1"))
    repo.publish()
    ws = workspace({"os/BUILD": BUILD.format(keyring=repo.keyring).replace('["app"]', '["libfoo", "app=3.0"]')},
                   toml=f'debian_mirror = "{repo.url}"\n')
    result = ws.mk("lock", "//os:base")
    assert result.code == 2
    assert result.err == (
        "os/BUILD:2:1: error: deb_packages //os:base: version 3.0 of 'app' is not in the indices; "
        "available: 1.0+deb12u1 (bookworm-security), 1.0 (bookworm)\n"
    )
    assert not (ws.root / "os/base.lock.json").exists()
