"""`mk build --profile` (a Chrome trace) and `mk query graph` (text, dot and SVG)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import Workspace, WorkspaceFactory, require

BUILD = textwrap.dedent("""
    genrule(name = "slow1", srcs = ["a.txt"], outs = ["slow1.out"], cmd = "sleep 0.5; cp $< $@")
    genrule(name = "slow2", srcs = ["a.txt"], outs = ["slow2.out"], cmd = "sleep 0.5; cat $< $< > $@")
    genrule(name = "top", srcs = [":slow1", ":slow2"], outs = ["top.out"], cmd = "cat $(SRCS) > $@")
""")


@pytest.fixture
def ws(workspace: WorkspaceFactory) -> Workspace:
    ws = workspace({"pkg/BUILD": BUILD, "pkg/a.txt": "a\n"})
    ws.age_sources()
    return ws


def complete_events(trace: dict[str, list[dict[str, object]]]) -> list[dict[str, object]]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


def test_profile_is_a_trace_with_one_track_per_worker(ws: Workspace, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    result = ws.mk("build", "//pkg:top", "-j", "2", "--profile", str(profile))
    assert result.code == 0, result.err
    trace = json.loads(profile.read_text(encoding="utf-8"))
    events = complete_events(trace)
    assert sorted(str(e["name"]) for e in events) == ["Genrule //pkg:slow1", "Genrule //pkg:slow2", "Genrule //pkg:top"]
    for event in events:
        assert event["pid"] == 1
        assert isinstance(event["ts"], int) and isinstance(event["dur"], int)
        assert event["ts"] >= 0 and event["dur"] >= 0
    slow = {str(e["name"]): e for e in events if "slow" in str(e["name"])}
    assert slow["Genrule //pkg:slow1"]["tid"] != slow["Genrule //pkg:slow2"]["tid"]  # they ran side by side
    assert all(int(str(e["dur"])) >= 400_000 for e in slow.values())
    names = {e["tid"]: e["args"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {e["tid"] for e in events} <= set(names)

    assert {str(e["args"]["status"]) for e in events} == {"executed"}  # type: ignore[index]

    # A no-op build executes nothing; its trace shows each action found in the cache, marked so.
    assert ws.mk("build", "//pkg:top", "--profile", str(profile)).code == 0
    cached = complete_events(json.loads(profile.read_text(encoding="utf-8")))
    assert sorted(str(e["name"]) for e in cached) == [
        "Genrule //pkg:slow1 (cached)", "Genrule //pkg:slow2 (cached)", "Genrule //pkg:top (cached)"]
    assert all(e["cat"] == "cached" and e["args"]["status"] == "cached" and e["args"]["origin"] == "local"  # type: ignore[index]
               for e in cached)


def test_profile_is_written_when_the_build_fails(ws: Workspace, tmp_path: Path) -> None:
    ws.write("pkg/BUILD", BUILD.replace("cat $(SRCS) > $@", "false"))
    profile = tmp_path / "profile.json"
    failed = ws.mk("build", "//pkg:top", "--profile", str(profile))
    assert failed.code == 1
    assert "error: Genrule //pkg:top failed (exit code 1)\n  command: false\n" in failed.err, failed.err
    assert len(complete_events(json.loads(profile.read_text(encoding="utf-8")))) == 2


def test_query_graph_as_edges_and_dot(ws: Workspace) -> None:
    result = ws.mk("query", "graph", "//pkg:top")
    assert result.code == 0, result.err
    assert result.out.splitlines() == ["//pkg:slow1", "//pkg:slow2", "//pkg:top -> //pkg:slow1",
                                       "//pkg:top -> //pkg:slow2"]
    dot = ws.mk("query", "graph", "//pkg:top", "--output", "dot")
    assert dot.code == 0, dot.err
    assert dot.out.startswith("digraph mk {")
    assert '"//pkg:top" -> "//pkg:slow1";' in dot.out and '"//pkg:top" -> "//pkg:slow2";' in dot.out


def test_query_graph_as_svg(ws: Workspace) -> None:
    require("dot")
    result = ws.mk("query", "graph", "//pkg:top", "--output", "svg")
    assert result.code == 0, result.err
    assert "<svg" in result.out and "//pkg:slow1" in result.out


def test_query_svg_without_graphviz(ws: Workspace, tmp_path: Path) -> None:
    result = ws.mk("query", "graph", "//pkg:top", "--output", "svg", env={"PATH": str(tmp_path)})
    assert result.code == 2
    assert result.err == "error: --output svg needs graphviz's `dot`; on Debian: apt-get install graphviz\n"
