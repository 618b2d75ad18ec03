"""Updates as a visible step: `mk lock` keeps what is locked, `mk lock --update` moves and says
what moved (security updates marked), `--security-only` moves only those, and `mk lock --check`
writes nothing and exits 1 exactly when a security update is pending."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
from conftest import MIRROR_SECONDS, Result, Workspace, WorkspaceFactory
from debrepo import Deb, Repo
from test_deb import deb_workspace

BUILD = """
deb_packages(name = "base", packages = [{packages}], keyring = "{keyring}",
             suites = ["bookworm", "bookworm-updates", "bookworm-security"])
"""


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """bookworm: app 1.0 (needs libfoo) and libfoo 1.0, tool 1.0; nothing in bookworm-updates or
    bookworm-security yet."""
    repo = Repo(tmp_path / "repo")
    repo.add("bookworm", Deb("app", "1.0", depends="libfoo"), Deb("libfoo", "1.0"), Deb("tool", "1.0"))
    repo.add("bookworm-updates")
    repo.add("bookworm-security")
    repo.publish()
    return repo


def published_updates(repo: Repo) -> None:
    """app 1.1 (which now also needs libnew) in bookworm-updates, and a security fix of libfoo."""
    repo.replace("bookworm-updates", Deb("app", "1.1", depends="libfoo, libnew"), Deb("libnew", "1.0"))
    repo.replace("bookworm-security", Deb("libfoo", "1.0+deb12u1"))
    repo.publish()


# What `published_updates` changes, as `mk lock --update` and `--check` print it.
PUBLISHED = ["  app 1.0 -> 1.1", "  libfoo 1.0 -> 1.0+deb12u1 (security)", "  + libnew 1.0"]


def workspace_for(workspace: WorkspaceFactory, repo: Repo, packages: str = '"app"') -> Workspace:
    ws = deb_workspace(workspace, repo)
    ws.write("os/BUILD", BUILD.format(packages=packages, keyring=repo.keyring))
    return ws


def versions(ws: Workspace) -> dict[str, tuple[str, str]]:
    return {p["name"]: (p["version"], p["archive"]) for p in json.loads(ws.read("os/base.lock.json"))["packages"]}


def lines(result: Result) -> list[str]:
    return result.out.splitlines()


def test_lock_keeps_what_is_locked_and_moves_only_what_an_edit_needs(workspace: WorkspaceFactory,
                                                                      repo: Repo) -> None:
    ws = workspace_for(workspace, repo)
    assert ws.mk("lock", "//os:base").code == 0
    published_updates(repo)
    before = ws.read("os/base.lock.json")
    result = ws.mk("lock", "//os:base")
    assert lines(result) == ["os/base.lock.json: 2 packages (unchanged)"]
    assert ws.read("os/base.lock.json") == before
    ws.write("os/BUILD", BUILD.format(packages='"app", "tool"', keyring=repo.keyring))
    result = ws.mk("lock", "//os:base")
    assert lines(result) == ["os/base.lock.json: 3 packages (written)", "  + tool 1.0"]
    assert versions(ws) == {"app": ("1.0", "debian"), "libfoo": ("1.0", "debian"), "tool": ("1.0", "debian")}


def test_update_prints_each_change_and_marks_the_security_update(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = workspace_for(workspace, repo)
    assert ws.mk("lock", "//os:base").code == 0
    published_updates(repo)
    result = ws.mk("lock", "--update", "//os:base")
    assert result.code == 0, result.err
    assert lines(result) == ["os/base.lock.json: 3 packages (written)", *PUBLISHED]
    assert versions(ws) == {"app": ("1.1", "debian"), "libfoo": ("1.0+deb12u1", "debian-security"),
                            "libnew": ("1.0", "debian")}
    assert lines(ws.mk("lock", "--update", "//os:base")) == ["os/base.lock.json: 3 packages (unchanged)"]


def test_check_exits_non_zero_exactly_while_a_security_update_is_pending(workspace: WorkspaceFactory,
                                                                         repo: Repo) -> None:
    ws = workspace_for(workspace, repo)
    assert ws.mk("lock", "//os:base").code == 0
    result = ws.mk("lock", "--check", "//os:base")
    assert (result.code, lines(result)) == (0, ["os/base.lock.json: up to date (2 packages)"])

    published_updates(repo)
    locked = ws.read("os/base.lock.json")
    result = ws.mk("lock", "--check", "//os:base")
    assert result.code == 1, result.err
    assert lines(result) == ["os/base.lock.json: 3 changes (1 security update); nothing written", *PUBLISHED]
    assert ws.read("os/base.lock.json") == locked  # nothing written

    result = ws.mk("lock", "--update", "--security-only", "//os:base")
    assert lines(result) == ["os/base.lock.json: 2 packages (written)", "  libfoo 1.0 -> 1.0+deb12u1 (security)"]
    assert versions(ws) == {"app": ("1.0", "debian"), "libfoo": ("1.0+deb12u1", "debian-security")}

    result = ws.mk("lock", "--check", "//os:base")  # what is left is no security update: exit 0
    assert result.code == 0, result.err
    assert lines(result) == [
        "os/base.lock.json: 2 changes (0 security updates); nothing written",
        "  app 1.0 -> 1.1",
        "  + libnew 1.0",
    ]
    result = ws.mk("lock", "--check", "--security-only", "//os:base")
    assert (result.code, lines(result)) == (0, ["os/base.lock.json: up to date (2 packages)"])


def test_check_covers_every_package_set_a_pattern_names(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = workspace_for(workspace, repo)
    ws.write("tools/BUILD", BUILD.replace('"base"', '"set"').format(packages='"tool"', keyring=repo.keyring)
             + 'filegroup(name = "other", srcs = [])\n')
    assert ws.mk("lock", "//...").code == 0
    published_updates(repo)
    result = ws.mk("lock", "--check", "//...")
    assert result.code == 1
    assert [line for line in lines(result) if not line.startswith("  ")] == [
        "os/base.lock.json: 3 changes (1 security update); nothing written",
        "tools/set.lock.json: up to date (1 package)",
    ]


def test_check_says_when_the_package_list_changed_and_needs_a_lockfile(workspace: WorkspaceFactory,
                                                                       repo: Repo) -> None:
    ws = workspace_for(workspace, repo)
    result = ws.mk("lock", "--check", "//os:base")
    assert result.code == 2
    assert "no lockfile 'os/base.lock.json' to check; run `mk lock //os:base` to create it" in result.err
    assert ws.mk("lock", "//os:base").code == 0
    ws.write("os/BUILD", BUILD.format(packages='"app", "tool"', keyring=repo.keyring))
    result = ws.mk("lock", "--check", "//os:base")
    assert lines(result)[0] == ("os/base.lock.json: 1 change (0 security updates); nothing written; its package list "
                                "changed since it was written: run `mk lock`")


def test_lock_options_that_do_not_go_together_are_refused(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = workspace_for(workspace, repo)
    assert "--security-only goes with --update or --check" in ws.mk("lock", "--security-only", "//os:base").err
    assert "--check writes nothing" in ws.mk("lock", "--check", "--update", "//os:base").err
    result = ws.mk("lock", "//os:all")
    assert result.code == 0 and lines(result) == ["os/base.lock.json: 2 packages (written)"]


REPOSITORY = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"(?P<lock>examples/\S+\.lock\.json): (up to date \(\d+ (packages?|files?)\)|\d+ changes? "
                     r"\((?P<security>\d+) security updates?\); nothing written)")
CHANGE = re.compile(r"  (\S+ \S+ -> \S+( \(security\))?|\+ \S+ \S+( \(security\))?|- \S+ \S+)")


@pytest.mark.mirror
@pytest.mark.timeout(MIRROR_SECONDS + 60)
def test_check_reports_what_the_real_mirror_has_newer_than_the_examples(workspace: WorkspaceFactory) -> None:
    """Debian publishing updates is no failure: this reports them. A crash, an error or an answer
    that is not the documented form is."""
    ws = workspace(toml=(REPOSITORY / "mk.toml").read_text())
    shutil.copytree(REPOSITORY / "examples", ws.root / "examples")
    before = {p.name: p.read_bytes() for p in (ws.root / "examples").glob("*.lock.json")}
    result = ws.mk("lock", "--check", "//examples/...", timeout=MIRROR_SECONDS,
                   what="reads the mirror's package indices")
    print(result.out)
    assert result.code in (0, 1), result.err  # 2: an error; anything else: a crash
    assert "Traceback" not in result.err, result.err
    summaries = [SUMMARY.fullmatch(line) for line in result.out.splitlines() if not line.startswith("  ")]
    assert all(summaries), result.out
    assert sorted(m["lock"] for m in summaries if m) == sorted(f"examples/{name}" for name in before)
    assert all(CHANGE.fullmatch(line) for line in result.out.splitlines() if line.startswith("  ")), result.out
    pending = sum(int(m["security"] or 0) for m in summaries if m)
    assert (result.code == 1) == (pending > 0), result.out
    assert {p.name: p.read_bytes() for p in (ws.root / "examples").glob("*.lock.json")} == before  # nothing written
    if any(m and "nothing written" in m[0] for m in summaries):
        warnings.warn(f"the mirror has newer versions than the examples lock:\n{result.out}", stacklevel=1)
