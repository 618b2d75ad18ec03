"""`mk query` with target patterns and source files (as labels and as paths), and its outputs."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
from conftest import MK, Workspace, WorkspaceFactory, mk_env

# site  <- index.html, style.css      (a filegroup: no action of its own)
# files <- :site                      (a layer)
# count <- index.html
# note                                (no source at all)
# //app:root   <- //web:files
# //app:other  <- data.txt
FILES = {
    "web/BUILD": textwrap.dedent("""
        filegroup(name = "site", srcs = ["index.html", "style.css"])
        layer(name = "files", files = {"/srv/www/": ":site"})
        genrule(name = "count", srcs = ["index.html"], outs = ["count.txt"], cmd = "wc -c < $< > $@")
        write_file(name = "note", out = "note.txt", content = "n\\n")
    """),
    "web/index.html": "<h1>hello</h1>\n",
    "web/style.css": "h1 {}\n",
    "web/unused.txt": "nobody reads me\n",
    "app/BUILD": textwrap.dedent("""
        rootfs(name = "root", layers = ["//web:files"])
        genrule(name = "other", srcs = ["data.txt"], outs = ["other.txt"], cmd = "cp $< $@")
    """),
    "app/data.txt": "data\n",
}
WEB = ["//web:count", "//web:files", "//web:note", "//web:site"]


@pytest.fixture
def ws(workspace: WorkspaceFactory) -> Workspace:
    return workspace(FILES)


def lines(*labels: str) -> str:
    return "".join(f"{label}\n" for label in labels)


def test_deps_of_patterns(ws: Workspace) -> None:
    everything = ws.mk("query", "deps", "//...")
    assert everything.code == 0, everything.err
    assert everything.out == lines("//app:other", "//app:root", *WEB)
    assert ws.mk("query", "deps", "//web:all").out == lines(*WEB)
    assert ws.mk("query", "deps", "//app/...").out == lines("//app:other", "//app:root", "//web:files", "//web:site")
    # Several arguments: the union of what each names.
    assert ws.mk("query", "deps", "//app:other", "//web:count").out == lines("//app:other", "//web:count")


def test_patterns_without_slashes_and_below_a_folder_that_is_no_package(ws: Workspace) -> None:
    ws.write("lib/one/BUILD", 'write_file(name = "one", out = "one.txt", content = "1\\n")\n')
    result = ws.mk("query", "deps", "lib/...", "web:note")
    assert result.code == 0, result.err
    assert result.out == lines("//lib/one:one", "//web:note")


def test_rdeps_of_a_pattern(ws: Workspace) -> None:
    result = ws.mk("query", "rdeps", "//web:all")
    assert result.code == 0, result.err
    assert result.out == lines("//app:root", *WEB)


def test_graph_of_a_pattern(ws: Workspace) -> None:
    result = ws.mk("query", "graph", "//app/...")
    assert result.code == 0, result.err
    assert result.out == lines("//app:other", "//app:root -> //web:files", "//web:files -> //web:site", "//web:site")


@pytest.mark.parametrize("name", ["web/index.html", "//web:index.html", "./web/index.html"])
def test_rdeps_of_a_source_file_lists_every_target_that_uses_it(ws: Workspace, name: str) -> None:
    result = ws.mk("query", "rdeps", name)
    assert result.code == 0, result.err
    assert result.out == lines("//app:root", "//web:count", "//web:files", "//web:site")
    assert result.err == ""


def test_rdeps_of_files_and_targets_together(ws: Workspace) -> None:
    result = ws.mk("query", "rdeps", "web/style.css", "app/data.txt", "//web:note")
    assert result.code == 0, result.err
    assert result.out == lines("//app:other", "//app:root", "//web:files", "//web:note", "//web:site")


def test_rdeps_of_a_file_no_target_uses(ws: Workspace) -> None:
    result = ws.mk("query", "rdeps", "web/unused.txt")
    assert (result.code, result.out) == (0, "")
    assert result.err == "mk query: no target uses web/unused.txt\n"


def test_rdeps_of_a_file_as_dot(ws: Workspace) -> None:
    result = ws.mk("query", "rdeps", "web/style.css", "--output", "dot")
    assert result.code == 0, result.err
    assert result.out == textwrap.dedent("""\
        digraph mk {
          rankdir=LR;
          node [shape=box];
          "//app:root";
          "//web:files";
          "//web:site";
          "//app:root" -> "//web:files";
          "//web:files" -> "//web:site";
        }
    """)


def test_json_output_shape(ws: Workspace) -> None:
    result = ws.mk("query", "rdeps", "web/style.css", "//app:other", "--output", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == {
        "version": 1,
        "query": "rdeps",
        "roots": {"targets": ["//app:other"], "files": ["web/style.css"]},
        "targets": [
            {"label": "//app:other", "rule": "genrule", "deps": [], "files": ["app/data.txt"]},
            {"label": "//app:root", "rule": "rootfs", "deps": ["//web:files"], "files": []},
            {"label": "//web:files", "rule": "layer", "deps": ["//web:site"],
             "files": ["web/index.html", "web/style.css"]},
            {"label": "//web:site", "rule": "filegroup", "deps": [], "files": ["web/index.html", "web/style.css"]},
        ],
    }
    # Edges go only to listed targets, as in dot; deps lists the closure of a pattern.
    deps = json.loads(ws.mk("query", "deps", "//app:root", "--output", "json").out)
    assert deps["roots"] == {"targets": ["//app:root"], "files": []}
    assert [t["label"] for t in deps["targets"]] == ["//app:root", "//web:files", "//web:site"]


def test_a_misspelt_file_is_an_error_with_a_suggestion(ws: Workspace) -> None:
    result = ws.mk("query", "rdeps", "web/index.htm")
    assert (result.code, result.out) == (2, "")
    assert result.err == ("error: 'web/index.htm' is neither a target nor a file of the workspace "
                          "(did you mean 'web/index.html'?)\n")


def test_a_misspelt_file_label_suggests_the_file(ws: Workspace) -> None:
    result = ws.mk("query", "rdeps", "//web:index.htm")
    assert (result.code, result.out) == (2, "")
    assert result.err == "error: target '//web:index.htm' does not exist (did you mean '//web:index.html'?)\n"


def test_a_path_outside_the_workspace_is_an_error(ws: Workspace) -> None:
    ws.write("../outside.txt", "x\n")
    result = ws.mk("query", "rdeps", "../outside.txt")
    assert (result.code, result.out) == (2, "")
    assert result.err == "error: '../outside.txt' is neither a target nor a file of the workspace\n"


def test_deps_of_a_source_file_is_an_error_that_says_what_to_ask(ws: Workspace) -> None:
    result = ws.mk("query", "deps", "web/index.html")
    assert (result.code, result.out) == (2, "")
    assert result.err == ("error: 'web/index.html' is a source file, which depends on nothing; "
                          "`mk query rdeps web/index.html` lists the targets that use it\n")


def test_a_pattern_that_matches_nothing(ws: Workspace) -> None:
    ws.write("empty/BUILD", "")
    result = ws.mk("query", "deps", "//empty/...")
    assert (result.code, result.err) == (2, "error: pattern '//empty/...' matches no targets\n")


def test_from_a_folder_files_and_patterns_are_relative_to_it(ws: Workspace) -> None:
    def query_in_web(*args: str) -> str:
        result = subprocess.run([MK, "query", *args], cwd=ws.root / "web", env=mk_env(ws.cache_dir),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert query_in_web("rdeps", "index.html") == lines("//app:root", "//web:count", "//web:files", "//web:site")
    assert query_in_web("deps", ":note") == lines("//web:note")
    assert query_in_web("deps", "//app:other") == lines("//app:other")
