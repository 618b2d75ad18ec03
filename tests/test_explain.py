"""`mk explain`: why each action of the last build ran."""

from __future__ import annotations

import textwrap
from pathlib import Path

import blake3
import pytest
from conftest import Workspace, WorkspaceFactory

import mk.engine.build
from mk.cache.local import LocalCache
from mk.cache.stat_cache import StatCache
from mk.engine.build import BuildOptions, build
from mk.engine.workspace import find_workspace
from mk.rules.families import registry

BUILD = textwrap.dedent("""
    genrule(name = "a", srcs = ["a.txt"], outs = ["a.out"], cmd = "cp $< $@")
    genrule(name = "b", srcs = [":a"], outs = ["b.out"], cmd = "cat $< $< > $@")
    genrule(name = "other", srcs = ["o.txt"], outs = ["o.out"], cmd = "cp $< $@")
""")
ONE, TWO = b"one\n", b"two\n"  # the contents of pkg/a.txt before and after the edit


@pytest.fixture
def ws(workspace: WorkspaceFactory) -> Workspace:
    ws = workspace({"pkg/BUILD": BUILD, "pkg/a.txt": ONE, "pkg/o.txt": "o\n"})
    ws.age_sources()
    return ws


def short(content: bytes) -> str:
    """How explain shows the digest of `content`: the first 8 hex digits of its blake3."""
    return blake3.blake3(content).hexdigest()[:8] + "…"


def explain(ws: Workspace, target: str = "//pkg:b") -> list[str]:
    result = ws.mk("explain", target)
    assert result.code == 0, result.err
    return result.out.splitlines()


def test_first_build_then_a_no_op_that_records_nothing(ws: Workspace) -> None:
    ws.build("//pkg:b", "//pkg:other")
    assert explain(ws) == ["Genrule //pkg:a: first build", "Genrule //pkg:b: first build"]
    (log,) = (ws.cache_dir / "explain").iterdir()
    before = log.stat().st_mtime_ns
    ws.build("//pkg:b", "//pkg:other")  # a no-op: nothing is written, explain keeps the last build that ran
    assert log.stat().st_mtime_ns == before
    assert explain(ws) == ["Genrule //pkg:a: first build", "Genrule //pkg:b: first build"]


def test_changed_input_names_the_file_and_digests(ws: Workspace) -> None:
    ws.build("//pkg:b", "//pkg:other")
    ws.write("pkg/a.txt", TWO)
    ws.build("//pkg:b", "//pkg:other")
    # a.out is a copy of a.txt, so both inputs went from the digest of "one\n" to that of "two\n".
    change = f"({short(ONE)} -> {short(TWO)})"
    assert explain(ws) == [
        f"Genrule //pkg:a: input pkg/a.txt changed {change}",
        f"Genrule //pkg:b: input pkg/a.out changed {change}",
    ]
    # Only the closure of the target asked about is explained.
    assert explain(ws, "//pkg:other") == ["mk explain: no action of //pkg:other ran in the last build"]


def test_changed_command_and_parameter(ws: Workspace) -> None:
    ws.build("//pkg:b")
    ws.write("pkg/BUILD", BUILD.replace("cat $< $< > $@", "cat $< > $@"))
    ws.build("//pkg:b")
    assert explain(ws) == ["Genrule //pkg:b: command changed"]

    ws.write("mk.toml", "source_date_epoch = 12345\n")
    ws.build("//pkg:b")
    assert explain(ws) == ["Genrule //pkg:a: parameter 'env' changed", "Genrule //pkg:b: parameter 'env' changed"]


def test_changed_host_tool(ws: Workspace, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = find_workspace(ws.root)
    cache = LocalCache(cache_dir)
    build(workspace, cache, ["//pkg:a"], BuildOptions(jobs=1), registry())

    def other_bash(stats: StatCache, tool: str) -> str:
        return "f" * 64

    monkeypatch.setattr(mk.engine.build, "_tool_digest", other_bash)
    build(workspace, cache, ["//pkg:a"], BuildOptions(jobs=1), registry())
    bash = Path("/bin/bash").resolve().read_bytes()  # the tool genrule runs, as the stat cache hashes it
    assert explain(ws, "//pkg:a") == [f"Genrule //pkg:a: tool /bin/bash changed ({short(bash)} -> ffffffff…)"]


def test_a_failed_action_is_explained(ws: Workspace) -> None:
    ws.build("//pkg:a")
    ws.write("pkg/BUILD", BUILD.replace("cp $< $@", "false"))
    failed = ws.mk("build", "//pkg:a")
    assert failed.code == 1
    assert "error: Genrule //pkg:a failed (exit code 1)\n  command: false\n" in failed.err, failed.err
    assert explain(ws, "//pkg:a") == ["Genrule //pkg:a: command changed"]
