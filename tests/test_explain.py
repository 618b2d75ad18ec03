"""`mk explain`: why each action of the last build ran."""

from __future__ import annotations

import textwrap
from pathlib import Path

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


@pytest.fixture
def ws(workspace: WorkspaceFactory) -> Workspace:
    ws = workspace({"pkg/BUILD": BUILD, "pkg/a.txt": "one\n", "pkg/o.txt": "o\n"})
    ws.age_sources()
    return ws


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
    ws.write("pkg/a.txt", "two\n")
    ws.build("//pkg:b", "//pkg:other")
    lines = explain(ws)
    assert len(lines) == 2, lines
    assert lines[0].startswith("Genrule //pkg:a: input pkg/a.txt changed (")
    assert lines[1].startswith("Genrule //pkg:b: input pkg/a.out changed (")
    old, new = lines[0].split("(")[1].rstrip(")").split(" -> ")
    assert old != new and old.endswith("…")
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
    [line] = explain(ws, "//pkg:a")
    assert line.startswith("Genrule //pkg:a: tool /")
    assert line.endswith("changed (" + line.split("(")[1].split(" ")[0] + " -> ffffffff…)")


def test_a_failed_action_is_explained(ws: Workspace) -> None:
    ws.build("//pkg:a")
    ws.write("pkg/BUILD", BUILD.replace("cp $< $@", "false"))
    assert ws.mk("build", "//pkg:a").code == 1
    assert explain(ws, "//pkg:a") == ["Genrule //pkg:a: command changed"]
