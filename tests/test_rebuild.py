"""Incremental builds: what runs again after what change, and what an action can see."""

from __future__ import annotations

import os
import stat
import textwrap
import time
from pathlib import Path

import pytest
from conftest import HOST_TOOLS, Workspace, WorkspaceFactory, executed_labels, parse_summary, read_events

import mk.cache.stat_cache
from mk.cache.cas import digest_file
from mk.cache.local import LocalCache
from mk.engine.build import BuildOptions, build
from mk.engine.workspace import find_workspace
from mk.rules.families import registry

EXIT_BUILD_FAILED = 1

# count  <- leaf1.txt        (line count: changes only when lines are added or removed)
# copy1  <- leaf1.txt
# upper  <- leaf2.txt
# twice  <- :count
# top    <- :twice, :upper
GRAPH = {
    "pkg/BUILD": textwrap.dedent("""
        genrule(name = "count", srcs = ["leaf1.txt"], outs = ["count.txt"], cmd = "wc -l < $< > $@")
        genrule(name = "copy1", srcs = ["leaf1.txt"], outs = ["copy1.txt"], cmd = "cp $< $@")
        genrule(name = "upper", srcs = ["leaf2.txt"], outs = ["upper.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "twice", srcs = [":count"], outs = ["twice.txt"], cmd = "cat $< $< > $@")
        genrule(
            name = "top",
            srcs = [":twice", ":upper"],
            outs = ["top.txt"],
            cmd = "cat $(SRCS) > $@",
        )
    """),
    "pkg/leaf1.txt": "one\ntwo\n",
    "pkg/leaf2.txt": "abc\n",
}
EVERYTHING = ["//pkg:copy1", "//pkg:top"]
ALL_LABELS = ["//pkg:copy1", "//pkg:count", "//pkg:top", "//pkg:twice", "//pkg:upper"]


@pytest.fixture
def graph_ws(workspace: WorkspaceFactory) -> Workspace:
    ws = workspace(GRAPH)
    ws.age_sources()
    return ws


def rebuild(ws: Workspace, tmp_path: Path, name: str) -> list[str]:
    """Build everything and return the labels whose actions executed."""
    events = tmp_path / f"{name}.jsonl"
    result = ws.build(*EVERYTHING, events=events)
    labels = executed_labels(events)
    assert parse_summary(result.out).executed == len(labels)
    return labels


# ---- no-op and touch ----------------------------------------------------------------------------


def test_first_build_runs_everything_and_the_second_nothing(graph_ws: Workspace, tmp_path: Path) -> None:
    first = graph_ws.build(*EVERYTHING, events=tmp_path / "1.jsonl")
    summary = parse_summary(first.out)
    assert (summary.targets, summary.actions, summary.executed, summary.cached) == (5, 5, 5, 0)
    assert sorted(first.out.splitlines()[:-1]) == ["mk-out/pkg/copy1.txt", "mk-out/pkg/top.txt"]
    assert graph_ws.read("mk-out/pkg/top.txt") == "2\n2\nABC\n"

    second = graph_ws.build(*EVERYTHING, events=tmp_path / "2.jsonl")
    summary = parse_summary(second.out)
    assert (summary.targets, summary.actions, summary.executed, summary.cached) == (5, 5, 0, 5)
    assert (summary.local, summary.remote) == (5, 0)
    assert second.out.splitlines()[:-1] == first.out.splitlines()[:-1]
    events = read_events(tmp_path / "2.jsonl")
    assert sorted(str(e["label"]) for e in events) == ALL_LABELS
    assert {e["status"] for e in events} == {"cached"}
    # The same keys both times: nothing about a build's timing leaks into a key.
    first_keys = {e["label"]: e["key"] for e in read_events(tmp_path / "1.jsonl")}
    assert {e["label"]: e["key"] for e in events} == first_keys


def test_json_events_describe_every_action(graph_ws: Workspace, tmp_path: Path) -> None:
    graph_ws.build("//pkg:top", events=tmp_path / "e.jsonl")
    events = read_events(tmp_path / "e.jsonl")
    assert len(events) == 4
    for event in events:
        assert {"label", "mnemonic", "key", "status", "duration"} <= set(event)
        assert event["mnemonic"] == "Genrule"
        assert event["status"] == "executed"
        assert isinstance(event["key"], str) and len(event["key"]) == 64
        assert isinstance(event["duration"], float) and event["duration"] >= 0
    assert len({e["key"] for e in events}) == 4
    # Dependencies finish before their dependents.
    order = [e["label"] for e in events]
    assert order.index("//pkg:count") < order.index("//pkg:twice") < order.index("//pkg:top")
    assert order.index("//pkg:upper") < order.index("//pkg:top")


def test_touching_a_source_without_changing_it_executes_nothing(graph_ws: Workspace, tmp_path: Path) -> None:
    assert rebuild(graph_ws, tmp_path, "first") == ALL_LABELS
    os.utime(graph_ws.root / "pkg/leaf1.txt")  # new mtime, same bytes
    os.utime(graph_ws.root / "pkg/BUILD")
    assert rebuild(graph_ws, tmp_path, "touched") == []


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    hashed: list[Path] = []
    real = digest_file

    def counting(path: Path) -> str:
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(mk.cache.stat_cache, "digest_file", counting)
    return hashed


def _build_in_process(ws: Workspace) -> tuple[int, int]:
    result = build(find_workspace(ws.root), LocalCache(ws.cache_dir), EVERYTHING, BuildOptions(jobs=2), registry())
    assert not result.schedule.failures
    return result.summary.executed, result.summary.cached_local


def test_noop_build_hashes_no_file(graph_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    graph_ws.build(*EVERYTHING)
    hashed = _count_hashes(monkeypatch)

    assert _build_in_process(graph_ws) == (0, 5)
    assert hashed == [], f"a no-op build re-hashed {hashed}"

    # A touched file is re-hashed (its stat changed), found identical, and nothing runs.
    later = time.time() - 5
    os.utime(graph_ws.root / "pkg/leaf2.txt", (later, later))
    assert _build_in_process(graph_ws) == (0, 5)
    assert hashed == [graph_ws.root / "pkg/leaf2.txt"]


def test_tampered_output_in_mk_out_is_restored(graph_ws: Workspace, tmp_path: Path) -> None:
    graph_ws.build(*EVERYTHING)
    graph_ws.write("mk-out/pkg/top.txt", "tampered\n")
    (graph_ws.root / "mk-out/pkg/copy1.txt").unlink()
    assert rebuild(graph_ws, tmp_path, "again") == []
    assert graph_ws.read("mk-out/pkg/top.txt") == "2\n2\nABC\n"
    assert graph_ws.read("mk-out/pkg/copy1.txt") == "one\ntwo\n"


# ---- what re-runs after a change ----------------------------------------------------------------


def test_changing_a_leaf_reexecutes_exactly_its_dependents(graph_ws: Workspace, tmp_path: Path) -> None:
    rebuild(graph_ws, tmp_path, "first")
    graph_ws.write("pkg/leaf1.txt", "one\ntwo\nthree\n")
    assert rebuild(graph_ws, tmp_path, "leaf1") == ["//pkg:copy1", "//pkg:count", "//pkg:top", "//pkg:twice"]
    assert graph_ws.read("mk-out/pkg/top.txt") == "3\n3\nABC\n"
    assert graph_ws.read("mk-out/pkg/copy1.txt") == "one\ntwo\nthree\n"

    graph_ws.write("pkg/leaf2.txt", "xyz\n")
    assert rebuild(graph_ws, tmp_path, "leaf2") == ["//pkg:top", "//pkg:upper"]
    assert graph_ws.read("mk-out/pkg/top.txt") == "3\n3\nXYZ\n"


def test_early_cutoff_stops_at_unchanged_output(graph_ws: Workspace, tmp_path: Path) -> None:
    rebuild(graph_ws, tmp_path, "first")
    graph_ws.write("pkg/leaf1.txt", "uno\ndos\n")  # same number of lines: count.txt is unchanged
    assert rebuild(graph_ws, tmp_path, "cutoff") == ["//pkg:copy1", "//pkg:count"]
    assert graph_ws.read("mk-out/pkg/copy1.txt") == "uno\ndos\n"
    assert graph_ws.read("mk-out/pkg/top.txt") == "2\n2\nABC\n"


def test_reverting_a_change_is_served_from_the_cache(graph_ws: Workspace, tmp_path: Path) -> None:
    rebuild(graph_ws, tmp_path, "first")
    graph_ws.write("pkg/leaf2.txt", "changed\n")
    assert rebuild(graph_ws, tmp_path, "changed") == ["//pkg:top", "//pkg:upper"]
    graph_ws.write("pkg/leaf2.txt", "abc\n")
    assert rebuild(graph_ws, tmp_path, "reverted") == []
    assert graph_ws.read("mk-out/pkg/top.txt") == "2\n2\nABC\n"


def test_changing_a_command_reruns_that_action_only(graph_ws: Workspace, tmp_path: Path) -> None:
    rebuild(graph_ws, tmp_path, "first")
    build_file = graph_ws.read("pkg/BUILD")
    graph_ws.write("pkg/BUILD", build_file.replace('cmd = "cp $< $@"', 'cmd = "cat $< $< > $@"'))
    assert rebuild(graph_ws, tmp_path, "cmd") == ["//pkg:copy1"]
    assert graph_ws.read("mk-out/pkg/copy1.txt") == "one\ntwo\n" * 2
    # Reformatting the BUILD file changes no action.
    graph_ws.write("pkg/BUILD", "# a comment\n\n" + graph_ws.read("pkg/BUILD").replace(" = ", "="))
    assert rebuild(graph_ws, tmp_path, "reformatted") == []


def test_editing_a_macro_is_seen(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    ws = workspace({
        "pkg/BUILD": 'load("//lib:defs.bzl", "greeting")\ngreeting(name = "hi")\n',
        "lib/BUILD": "",
        "lib/defs.bzl": 'def greeting(name):\n    write_file(name = name, out = name + ".txt", content = "hello\\n")\n',
    })
    ws.build("//pkg:hi")
    assert ws.read("mk-out/pkg/hi.txt") == "hello\n"
    ws.write("lib/defs.bzl", ws.read("lib/defs.bzl").replace("hello", "bonjour"))
    assert parse_summary(ws.build("//pkg:hi").out).executed == 1
    assert ws.read("mk-out/pkg/hi.txt") == "bonjour\n"


def test_a_new_file_matching_a_glob_is_seen(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": 'genrule(name = "all", srcs = glob(["**/*.txt"]), outs = ["all.out"], cmd = "cat $(SRCS) > $@")\n',
        "pkg/a.txt": "a\n",
        "pkg/sub/b.txt": "b\n",
    })
    ws.build("//pkg:all")
    assert ws.read("mk-out/pkg/all.out") == "a\nb\n"
    ws.write("pkg/sub/c.txt", "c\n")
    ws.build("//pkg:all")
    assert ws.read("mk-out/pkg/all.out") == "a\nb\nc\n"
    (ws.root / "pkg/a.txt").unlink()
    ws.build("//pkg:all")
    assert ws.read("mk-out/pkg/all.out") == "b\nc\n"
    ws.write("pkg/sub/BUILD", "")  # sub/ becomes a package of its own: glob stops there
    ws.build("//pkg:all")
    assert ws.read("mk-out/pkg/all.out") == ""


def test_recursive_patterns_see_packages_come_and_go(workspace: WorkspaceFactory) -> None:
    ws = workspace({"a/BUILD": 'write_file(name = "a", out = "a.txt")\n'})
    assert ws.build("//...").out.splitlines()[:-1] == ["mk-out/a/a.txt"]
    ws.write("b/c/d/BUILD", 'write_file(name = "d", out = "d.txt")\n')
    assert ws.build("//...").out.splitlines()[:-1] == ["mk-out/a/a.txt", "mk-out/b/c/d/d.txt"]
    (ws.root / "a/BUILD").unlink()
    assert ws.build("//...").out.splitlines()[:-1] == ["mk-out/b/c/d/d.txt"]
    ws.write("a/deep/BUILD", 'write_file(name = "e", out = "e.txt")\n')
    assert ws.build("//a/...").out.splitlines()[:-1] == ["mk-out/a/deep/e.txt"]


def test_a_source_appearing_fixes_the_build(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'genrule(name = "a", srcs = ["in.txt"], outs = ["a.out"], cmd = "cp $< $@")\n'})
    missing = ws.mk("build", "//pkg:a")
    assert (missing.code, missing.err) == (2, MISSING_IN_TXT)
    ws.write("pkg/in.txt", "late\n")
    ws.build("//pkg:a")
    assert ws.read("mk-out/pkg/a.out") == "late\n"


MISSING_IN_TXT = "pkg/BUILD:1:29: error: genrule //pkg:a: source file 'pkg/in.txt' does not exist\n"


def test_a_deleted_source_is_an_error_not_a_stale_success(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": 'genrule(name = "a", srcs = ["in.txt"], outs = ["a.out"], cmd = "cp $< $@")\n',
        "pkg/in.txt": "in\n",
    })
    ws.build("//pkg:a")
    (ws.root / "pkg/in.txt").unlink()
    result = ws.mk("build", "//pkg:a")
    assert result.code == 2, result
    assert result.err == MISSING_IN_TXT


def test_source_date_epoch_comes_from_mk_toml(workspace: WorkspaceFactory) -> None:
    ws = workspace(
        {"pkg/BUILD": 'genrule(name = "e", outs = ["e.txt"], cmd = "echo $$SOURCE_DATE_EPOCH > $@")\n'},
        toml="source_date_epoch = 1700000000\n",
    )
    ws.build("//pkg:e", env={"SOURCE_DATE_EPOCH": "42"})
    assert ws.read("mk-out/pkg/e.txt") == "1700000000\n"
    ws.write("mk.toml", HOST_TOOLS + "source_date_epoch = 1600000000\n")
    assert parse_summary(ws.build("//pkg:e").out).executed == 1
    assert ws.read("mk-out/pkg/e.txt") == "1600000000\n"


def test_source_date_epoch_defaults_to_zero(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'genrule(name = "e", outs = ["e.txt"], cmd = "echo $$SOURCE_DATE_EPOCH > $@")\n'})
    ws.build("//pkg:e")
    assert ws.read("mk-out/pkg/e.txt") == "0\n"


# ---- failures -----------------------------------------------------------------------------------

FAILING = {
    "pkg/BUILD": textwrap.dedent("""
        genrule(
            name = "a_bad",
            outs = ["bad.txt"],
            cmd = "echo partial > $@; echo 'first problem' >&2; echo 'second problem' >&2; exit 3",
        )
        genrule(name = "after_bad", srcs = [":a_bad"], outs = ["after.txt"], cmd = "cp $< $@")
        genrule(name = "b_good", outs = ["good.txt"], cmd = "echo good > $@")
    """),
}
A_BAD_FAILED = (
    "error: Genrule //pkg:a_bad failed (exit code 3)\n"
    "  command: echo partial > pkg/bad.txt; echo 'first problem' >&2; echo 'second problem' >&2; exit 3\n"
    "  | first problem\n"
    "  | second problem\n"
    "  hint: the command ran in mk's sandbox, which holds only its declared inputs, the host's /usr "
    "(toolchain = \"host\") and /tmp, with no network (mk build --sandbox-debug keeps the sandbox and shows how "
    "it was made)\n"
)
ONE_NOT_RUN = "mk: 1 actions not run because something they need failed\n"


def test_failure_prints_label_command_and_stderr(workspace: WorkspaceFactory) -> None:
    ws = workspace(FAILING)
    result = ws.mk("build", "//pkg:a_bad")
    assert result.code == EXIT_BUILD_FAILED, result
    assert A_BAD_FAILED in result.err
    summary = parse_summary(result.out)
    assert (summary.actions, summary.executed, summary.cached) == (1, 0, 0)
    assert not (ws.root / "mk-out/pkg/bad.txt").exists()
    # A failure is not cached: it runs (and fails) again.
    again = ws.mk("build", "//pkg:a_bad")
    assert again.code == EXIT_BUILD_FAILED
    assert A_BAD_FAILED in again.err


def test_missing_declared_output_is_a_failure(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'genrule(name = "a", outs = ["a.txt", "b.txt"], cmd = "touch pkg/a.txt")\n'})
    result = ws.mk("build", "//pkg:a")
    assert result.code == EXIT_BUILD_FAILED
    assert "error: Genrule //pkg:a did not create its declared output 'pkg/b.txt'" in result.err


def test_without_keep_going_the_build_stops_at_the_first_failure(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    ws = workspace(FAILING)
    events = tmp_path / "e.jsonl"
    # -j1: actions start in label order, so //pkg:a_bad fails before //pkg:b_good could start.
    result = ws.mk("build", "-j1", "//pkg:after_bad", "//pkg:b_good", "--json-events", str(events))
    assert result.code == EXIT_BUILD_FAILED
    assert result.err.endswith(A_BAD_FAILED + "\n" + ONE_NOT_RUN), result.err
    assert executed_labels(events) == []
    assert parse_summary(result.out).executed == 0
    assert not (ws.root / "mk-out/pkg/good.txt").exists()


def test_keep_going_builds_what_does_not_depend_on_the_failure(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    ws = workspace(FAILING)
    events = tmp_path / "e.jsonl"
    result = ws.mk("build", "-j1", "--keep-going", "//pkg:after_bad", "//pkg:b_good", "--json-events", str(events))
    assert result.code == EXIT_BUILD_FAILED
    assert result.err.endswith(A_BAD_FAILED + "\n" + ONE_NOT_RUN), result.err
    assert executed_labels(events) == ["//pkg:b_good"]
    summary = parse_summary(result.out)
    assert (summary.actions, summary.executed, summary.cached) == (3, 1, 0)
    # What succeeded is usable: placed in mk-out and listed, as with Bazel's --keep_going.
    assert result.out.splitlines()[:-1] == ["mk-out/pkg/good.txt"]
    assert ws.read("mk-out/pkg/good.txt") == "good\n"
    assert not (ws.root / "mk-out/pkg/after.txt").exists()
    # ... and cached.
    again = ws.mk("build", "--keep-going", "//pkg:after_bad", "//pkg:b_good", "--json-events", str(events))
    assert again.code == EXIT_BUILD_FAILED
    assert again.err.endswith(A_BAD_FAILED + "\n" + ONE_NOT_RUN), again.err
    assert executed_labels(events) == []
    assert [e["label"] for e in read_events(events) if e["status"] == "cached"] == ["//pkg:b_good"]


# ---- what an action sees ------------------------------------------------------------------------


def test_genrule_environment_is_scrubbed(workspace: WorkspaceFactory, cache_dir: Path) -> None:
    ws = workspace({
        "pkg/BUILD": textwrap.dedent("""
            genrule(
                name = "env",
                outs = ["env.txt", "home.txt", "umask.txt"],
                cmd = "env | sort > pkg/env.txt; " +
                      "test -d \\"$$HOME\\" && test -w \\"$$HOME\\" && echo \\"$$HOME\\" > pkg/home.txt; " +
                      "touch \\"$$HOME/mk-sandbox-probe-7f3a\\"; umask > pkg/umask.txt",
            )
        """),
    })
    host = {
        "FOO": "bar",
        "LANG": "fr_FR.UTF-8",
        "LC_ALL": "fr_FR.UTF-8",
        "TZ": "America/New_York",
        "SOURCE_DATE_EPOCH": "99",
        "PATH": f"{ws.root}/bin:{os.environ['PATH']}",
        "HOME": str(ws.root),
        "PYTHONPATH": "/nowhere",
    }
    ws.build("//pkg:env", env=host)
    env = dict(line.split("=", 1) for line in ws.read("mk-out/pkg/env.txt").splitlines())
    bash_own = {"PWD", "SHLVL", "_", "OLDPWD"}
    assert set(env) - bash_own == {"PATH", "LC_ALL", "TZ", "HOME", "TMPDIR", "SOURCE_DATE_EPOCH", "MK_JOBS"}, env
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["MK_JOBS"] == "1"  # a genrule takes one slot of -j
    assert env["LC_ALL"] == "C.UTF-8"
    assert env["TZ"] == "UTC"
    assert env["SOURCE_DATE_EPOCH"] == "0"
    assert "FOO" not in env and "LANG" not in env
    assert env["HOME"] == env["TMPDIR"] == "/tmp"  # the sandbox's own /tmp
    assert ws.read("mk-out/pkg/home.txt") == "/tmp\n"
    assert not Path("/tmp/mk-sandbox-probe-7f3a").exists(), "the sandbox's /tmp must be private"
    assert not any((cache_dir / "tmp").iterdir()), "the scratch area must be emptied after the action"
    assert ws.read("mk-out/pkg/umask.txt") == "0022\n"


def test_genrule_sees_only_declared_inputs(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": textwrap.dedent("""
            genrule(
                name = "ls",
                srcs = ["in.txt", "//other:made"],
                outs = ["ls.txt"],
                cmd = 'files=$$(find . -type f -o -type l | sort); echo "$$files" > $@',
            )
            genrule(name = "peek", srcs = ["in.txt"], outs = ["peek.txt"], cmd = "cat pkg/secret.txt > $@")
        """),
        "pkg/in.txt": "in\n",
        "pkg/secret.txt": "undeclared\n",
        "other/BUILD": 'write_file(name = "made", out = "made.txt", content = "made\\n")\n',
    })
    ws.build("//pkg:ls")
    assert ws.read("mk-out/pkg/ls.txt") == "./other/made.txt\n./pkg/in.txt\n"
    result = ws.mk("build", "//pkg:peek")
    assert result.code == EXIT_BUILD_FAILED
    assert "pkg/secret.txt: No such file or directory" in result.err


def test_an_action_scribbling_on_its_inputs_harms_neither_workspace_nor_cache(workspace: WorkspaceFactory) -> None:
    # Inputs are read-only copies; as root the mode does not stop the write, so they must be copies.
    scribble = "chmod u+w $(SRCS) || true; echo scribbled | tee -a $(SRCS) > /dev/null || true; echo done > $@"
    ws = workspace({
        "pkg/BUILD": textwrap.dedent(f"""
            write_file(name = "gen", out = "gen.txt", content = "generated\\n")
            genrule(name = "w", srcs = ["in.txt", ":gen"], outs = ["w.txt"], cmd = "{scribble}")
            genrule(name = "r", srcs = ["in.txt", ":gen", ":w"], outs = ["r.txt"], cmd = "cat $(SRCS) > $@")
        """),
        "pkg/in.txt": "in\n",
    })
    ws.build("//pkg:r")
    assert ws.read("pkg/in.txt") == "in\n"
    assert ws.read("mk-out/pkg/r.txt") == "in\ngenerated\ndone\n"
    verify = ws.mk("cache", "verify")
    assert verify.code == 0, verify


# ---- outputs ------------------------------------------------------------------------------------


def test_outputs_land_in_mk_out_by_package(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "BUILD": 'write_file(name = "root", out = "root.txt", content = "r\\n")\n',
        "a/b/BUILD": textwrap.dedent("""
            write_file(name = "tool", out = "bin/tool.sh", content = "#!/bin/sh\\necho hi\\n", is_executable = True)
            genrule(name = "gen", srcs = [":tool"], outs = ["gen/out.txt"], cmd = "$(location :tool) > $@")
        """),
    })
    result = ws.build("//:root", "//a/b:tool", "//a/b:gen")
    outputs = ["mk-out/a/b/bin/tool.sh", "mk-out/a/b/gen/out.txt", "mk-out/root.txt"]
    assert sorted(result.out.splitlines()[:-1]) == outputs
    assert ws.read("mk-out/root.txt") == "r\n"
    assert ws.read("mk-out/a/b/gen/out.txt") == "hi\n"
    assert stat.S_IMODE((ws.root / "mk-out/a/b/bin/tool.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((ws.root / "mk-out/a/b/gen/out.txt").stat().st_mode) == 0o644
    # Nothing is written into the source tree.
    assert not (ws.root / "a/b/bin").exists() and not (ws.root / "a/b/gen").exists()


def test_clean_removes_mk_out_but_keeps_the_cache(graph_ws: Workspace, tmp_path: Path) -> None:
    graph_ws.build(*EVERYTHING)
    result = graph_ws.mk("clean")
    assert result.code == 0, result
    assert result.out == "removed mk-out\n"
    assert not (graph_ws.root / "mk-out").exists()
    assert graph_ws.read("pkg/leaf1.txt") == "one\ntwo\n"
    assert rebuild(graph_ws, tmp_path, "after-clean") == []  # all from the cache
    assert graph_ws.read("mk-out/pkg/top.txt") == "2\n2\nABC\n"
    assert graph_ws.mk("clean").code == 0  # cleaning twice is fine


# ---- query --------------------------------------------------------------------------------------


def test_query_deps_and_rdeps(graph_ws: Workspace) -> None:
    graph_ws.write("other/BUILD", 'filegroup(name = "uses", srcs = ["//pkg:upper"])\n')
    deps = graph_ws.mk("query", "deps", "//pkg:top")
    assert deps.code == 0, deps
    assert deps.out == "//pkg:count\n//pkg:top\n//pkg:twice\n//pkg:upper\n"
    rdeps = graph_ws.mk("query", "rdeps", "//pkg:upper")
    assert rdeps.code == 0, rdeps
    assert rdeps.out == "//other:uses\n//pkg:top\n//pkg:upper\n"
    leaf = graph_ws.mk("query", "deps", "//pkg:copy1")
    assert leaf.out == "//pkg:copy1\n"


def test_query_output_dot(graph_ws: Workspace) -> None:
    result = graph_ws.mk("query", "deps", "//pkg:top", "--output", "dot")
    assert result.code == 0, result
    assert result.out == textwrap.dedent("""\
        digraph mk {
          rankdir=LR;
          node [shape=box];
          "//pkg:count";
          "//pkg:top";
          "//pkg:twice";
          "//pkg:upper";
          "//pkg:top" -> "//pkg:twice";
          "//pkg:top" -> "//pkg:upper";
          "//pkg:twice" -> "//pkg:count";
        }
    """)


def test_query_of_a_missing_target(graph_ws: Workspace) -> None:
    result = graph_ws.mk("query", "deps", "//pkg:tpo")
    assert result.code == 2
    assert result.err == "error: target '//pkg:tpo' does not exist (did you mean '//pkg:top'?)\n"
    pattern = graph_ws.mk("query", "deps", "//pkg:...")
    assert (pattern.code, pattern.err) == (2, "error: target '//pkg:...' does not exist\n")


def test_a_bare_name_equal_to_the_target_means_the_source_file(workspace: WorkspaceFactory) -> None:
    ws = workspace({"p/BUILD": 'genrule(name = "motd", srcs = ["motd"], outs = ["motd.out"], cmd = "cp $< $@")\n',
                    "p/motd": "hello\n"})
    ws.build("//p:motd")
    assert ws.read("mk-out/p/motd.out") == "hello\n"


def test_a_failure_names_its_targets_line_which_is_not_part_of_any_key(workspace: WorkspaceFactory) -> None:
    build_file = ('genrule(name = "a", outs = ["a.txt"], cmd = "echo a > $@")\n'
                  'genrule(name = "bad", outs = ["b.txt"], cmd = "exit 3")\n')
    ws = workspace({"pkg/BUILD": build_file})
    ws.build("//pkg:a")
    ws.write("pkg/BUILD", "# Two lines above every target now.\n\n" + build_file)
    assert parse_summary(ws.build("//pkg:a").out).executed == 0  # moved, not changed
    failed = ws.mk("build", "//pkg:bad")
    assert failed.code == 1
    assert "pkg/BUILD:4:1: error: Genrule //pkg:bad failed (exit code 3)\n" in failed.err, failed.err
