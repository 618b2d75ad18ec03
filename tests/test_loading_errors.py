"""Loading and analysis: every user error names file:line:col and says what to do; exit code 2.

Also: labels (`//pkg:name`, `:name`, `//pkg`), patterns (`//pkg:all`, `//...`) and glob().
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import MK, Workspace, WorkspaceFactory, mk_env, parse_summary, run_mk

from mk.engine.labels import Label, LabelError, Pattern

EXIT_USAGE = 2


def fails(ws: Workspace, *targets: str) -> str:
    """Run `mk build`, expect a loading/analysis error (exit 2, nothing run); return stderr."""
    result = ws.mk("build", *targets)
    assert result.code == EXIT_USAGE, f"expected exit 2, got {result.code}:\n{result.out}\n{result.err}"
    assert "Traceback" not in result.err, result.err
    assert not (ws.root / "mk-out").exists(), "nothing may be built when loading fails"
    summary = parse_summary(result.out)  # the summary line comes last even when loading fails
    assert (summary.executed, summary.cached) == (0, 0)
    return result.err


def build_file(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# ---- one test per error ------------------------------------------------------------------------


def test_unknown_rule_suggests_the_nearest(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": build_file("""
            write_file(name = "x", out = "x.txt")
            genrul(
                name = "a",
            )
        """),
    })
    assert fails(ws, "//pkg:a") == "pkg/BUILD:2:1: error: Variable 'genrul' not found, did you mean 'genrule'?\n"


def test_unknown_attribute_suggests_the_nearest(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": build_file("""
            write_file(name = "x", out = "x.txt")
            write_file(
                name = "a",
                out = "a.txt",
                contnet = "hi",
            )
        """),
    })
    assert fails(ws, "//pkg:a") == (
        "pkg/BUILD:2:1: error: write_file //pkg:a: unknown attribute 'contnet' (did you mean 'content'?)\n"
    )


def test_unknown_attribute_far_from_any_gets_no_suggestion(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'write_file(name = "a", out = "a.txt", zzzzzz = 1)\n'})
    assert fails(ws, "//pkg:a") == "pkg/BUILD:1:1: error: write_file //pkg:a: unknown attribute 'zzzzzz'\n"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ('write_file(name = "a", out = "a.txt", content = 3)',
         "write_file //pkg:a: attribute 'content' must be a string, got int"),
        ('genrule(name = "a", srcs = "in.txt", outs = ["a"], cmd = "true")',
         "genrule //pkg:a: attribute 'srcs' must be a list of labels, got string"),
        ('genrule(name = "a", outs = ["a", 1], cmd = "true")',
         "genrule //pkg:a: attribute 'outs' must be a list of output file names, got list whose entry 2 is an int"),
        ('write_file(name = "a", out = "a.txt", is_executable = "yes")',
         "write_file //pkg:a: attribute 'is_executable' must be a bool, got string"),
        ('tar(name = "a", src = ":l", compression = 9)',
         "tar //pkg:a: attribute 'compression' must be one of 'none', 'gzip', 'zstd', 'xz', got int"),
        ('genrule(name = "a", outs = ["a"], cmd = "true", toolchain = 1)',
         "genrule //pkg:a: attribute 'toolchain' must be a label, or \"host\", got int"),
    ],
)
def test_wrong_attribute_type(workspace: WorkspaceFactory, call: str, message: str) -> None:
    ws = workspace({"pkg/BUILD": f'write_file(name = "x", out = "x.txt")\n\n{call}\n'})
    assert fails(ws, "//pkg:a") == f"pkg/BUILD:3:1: error: {message}\n"


def test_missing_mandatory_attribute(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": build_file("""
            genrule(
                name = "a",
                outs = ["a.txt"],
            )
        """),
    })
    assert fails(ws, "//pkg:a") == "pkg/BUILD:1:1: error: genrule //pkg:a: missing mandatory attribute 'cmd'\n"


def test_missing_name(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'write_file(name = "x", out = "x.txt")\nwrite_file(out = "a.txt")\n'})
    assert fails(ws, "//pkg:x") == "pkg/BUILD:2:1: error: write_file() needs a 'name' string attribute\n"


def test_missing_label_in_a_dependency_suggests_existing_ones(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": build_file("""
            write_file(name = "hello", out = "hello.txt")
            write_file(name = "zzz", out = "zzz.txt")
            genrule(
                name = "a",
                srcs = [":helo"],
                outs = ["a.txt"],
                cmd = "cp $< $@",
            )
        """),
    })
    # Suggestions compare target names, so the shared '//pkg:' prefix does not make every target
    # in the package (here ':a' and ':zzz') look close.
    assert fails(ws, "//pkg:a") == (
        "pkg/BUILD:5:13: error: genrule //pkg:a depends on ':helo', which does not exist "
        "(did you mean '//pkg:hello' or '//pkg:hello.txt'?)\n"
    )


def test_missing_label_on_the_command_line_suggests_existing_ones(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": 'write_file(name = "hello", out = "hello.txt")\nwrite_file(name = "b", out = "b.txt")\n',
    })
    assert fails(ws, "//pkg:helo") == (
        "error: target '//pkg:helo' does not exist (did you mean '//pkg:hello' or '//pkg:hello.txt'?)\n"
    )


def test_missing_label_with_nothing_close(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'write_file(name = "hello", out = "hello.txt")\n'})
    assert fails(ws, "//pkg:qqq") == "error: target '//pkg:qqq' does not exist\n"


def test_missing_package_on_the_command_line(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'write_file(name = "hello", out = "hello.txt")\n'})
    assert fails(ws, "//nope:x") == "error: no package '//nope': nope/BUILD does not exist\n"


def test_missing_package_in_a_dependency(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": build_file("""
            genrule(
                name = "a",
                srcs = ["//nope:x"],
                outs = ["a.txt"],
                cmd = "cp $< $@",
            )
        """),
    })
    assert fails(ws, "//pkg:a") == (
        "pkg/BUILD:3:13: error: genrule //pkg:a depends on '//nope:x': no package '//nope': nope/BUILD does not exist\n"
    )


def test_duplicate_target(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": build_file("""
            write_file(name = "a", out = "a.txt")

            write_file(
                name = "a",
                out = "b.txt",
            )
        """),
    })
    assert fails(ws, "//pkg:a") == (
        "pkg/BUILD:3:1: error: duplicate target 'a' in //pkg (first defined at pkg/BUILD:1:1)\n"
    )


def test_output_declared_twice(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": 'write_file(name = "a", out = "x.txt")\nwrite_file(name = "b", out = "x.txt")\n',
    })
    assert fails(ws, "//pkg:a") == "pkg/BUILD:2:1: error: output 'x.txt' of :b is already declared by :a\n"


def test_dependency_cycle_prints_the_whole_cycle(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": build_file("""
            genrule(
                name = "a",
                srcs = [":b"],
                outs = ["a.txt"],
                cmd = "cp $< $@",
            )
            genrule(
                name = "b",
                srcs = ["//other:c"],
                outs = ["b.txt"],
                cmd = "cp $< $@",
            )
        """),
        "other/BUILD": build_file("""
            filegroup(
                name = "c",
                srcs = ["//pkg:a.txt"],
            )
        """),
    })
    assert fails(ws, "//pkg:a") == build_file("""
        pkg/BUILD:1:1: error: dependency cycle:
            //pkg:a  (pkg/BUILD:1:1)
            //pkg:b  (pkg/BUILD:7:1)
            //other:c  (other/BUILD:1:1)
            //pkg:a  (pkg/BUILD:1:1)
    """)


def test_target_depending_on_itself_is_a_cycle(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'filegroup(name = "x", srcs = [])\nfilegroup(name = "a", srcs = [":a"])\n'})
    assert fails(ws, "//pkg:a") == build_file("""
        pkg/BUILD:2:1: error: dependency cycle:
            //pkg:a  (pkg/BUILD:2:1)
            //pkg:a  (pkg/BUILD:2:1)
    """)


def test_source_file_that_does_not_exist(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": build_file("""
            genrule(
                name = "a",
                srcs = ["there.txt", "input.txt"],
                outs = ["a.txt"],
                cmd = "cat $(SRCS) > $@",
            )
        """),
        "pkg/there.txt": "here\n",
    })
    assert fails(ws, "//pkg:a") == (
        "pkg/BUILD:3:26: error: genrule //pkg:a: source file 'pkg/input.txt' does not exist\n"
    )


def test_source_file_inside_a_subpackage_must_be_named_through_it(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": 'filegroup(name = "a", srcs = ["sub/f.txt"])\n',
        "pkg/sub/BUILD": "",
        "pkg/sub/f.txt": "f\n",
    })
    assert fails(ws, "//pkg:a") == (
        "pkg/BUILD:1:31: error: filegroup //pkg:a: 'sub/f.txt' crosses into package '//pkg/sub'; "
        "refer to a target there instead\n"
    )


def test_starlark_syntax_error(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": 'write_file(name = "a", out = "a.txt")\nwrite_file(name = "b" out = "b.txt")\n',
    })
    # The few tokens that fit, not the fifty the grammar allows somewhere.
    assert fails(ws, "//pkg:a") == ("pkg/BUILD:2:23: error: unexpected identifier 'out' here, expected ',', ')' "
                                    "(closing the '(' at 2:11) or an operator\n")


@pytest.mark.parametrize(("source", "error"), [
    ('write_file(\n    name = "a",\n    out = "a.txt",\n', "pkg/BUILD:1:11: error: '(' is never closed\n"),
    ('X = {"a": [1, 2]\n', "pkg/BUILD:1:5: error: '{' is never closed\n"),
    ('X = "(["  # ( [\nY = [\n', "pkg/BUILD:2:5: error: '[' is never closed\n"),
])
def test_a_bracket_left_open_at_the_end_is_named_where_it_opens(
    workspace: WorkspaceFactory, source: str, error: str
) -> None:
    ws = workspace({"pkg/BUILD": source})
    assert fails(ws, "//pkg:a") == error


def test_a_statement_cut_short_inside_a_list(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'X = [1, 2\nY = 3\n'})
    assert fails(ws, "//pkg:a") == ("pkg/BUILD:2:1: error: unexpected identifier 'Y' here, expected ',', ']' "
                                    "(closing the '[' at 1:5) or an operator\n")


def test_starlark_runtime_error_points_at_the_line(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'N = 1\nwrite_file(name = "a", out = "a.txt", content = "x" + N)\n'})
    err = fails(ws, "//pkg:a")
    assert err == "pkg/BUILD:2:49: error: Operation '+' not supported for types 'string' and 'int'\n"


def test_fail_in_a_macro_points_at_the_call(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": 'load("//lib:defs.bzl", "checked")\n\nchecked(name = "a", size = -1)\n',
        "lib/defs.bzl": build_file("""
            def checked(name, size):
                if size < 0:
                    fail("size must be >= 0, got %d" % size)
                write_file(name = name, out = name + ".txt")
        """),
    })
    assert fails(ws, "//pkg:a") == "lib/defs.bzl:3:9: error: fail: size must be >= 0, got -1\n"


def test_builtin_error_inside_a_macro_keeps_its_location(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": 'load("//lib:defs.bzl", "sources")\n\nsources(name = "a")\n',
        "lib/defs.bzl": build_file("""
            def sources(name):
                filegroup(
                    name = name,
                    srcs = glob(["*.c"], allow_empty = False),
                )
        """),
    })
    assert fails(ws, "//pkg:a") == "lib/defs.bzl:4:16: error: glob(['*.c']) matched no files and allow_empty is False\n"


def test_load_of_a_missing_bzl_file(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": build_file("""
            # macros
            load("//lib:defs.bzl", "macro")
            macro(name = "a")
        """),
        "lib/BUILD": "",
    })
    assert fails(ws, "//pkg:a") == (
        "pkg/BUILD:2:1: error: load(): file 'lib/defs.bzl' does not exist (from '//lib:defs.bzl')\n"
    )


def test_load_of_a_missing_symbol(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": 'load("//lib:defs.bzl", "macro")\nmacro(name = "a")\n',
        "lib/defs.bzl": "def macr(name):\n    pass\n",
    })
    assert fails(ws, "//pkg:a") == "pkg/BUILD:1:24: error: Module has no symbol 'macro', did you mean 'macr'?\n"


def test_load_cycle(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": 'load("//lib:a.bzl", "A")\nwrite_file(name = "a", out = "a.txt", content = A)\n',
        "lib/a.bzl": 'load(":b.bzl", "B")\nA = B\n',
        "lib/b.bzl": 'X = 1\nload("//lib:a.bzl", "A")\nB = "b"\n',
    })
    assert fails(ws, "//pkg:a") == "lib/b.bzl:2:1: error: load() cycle: lib/a.bzl -> lib/b.bzl -> lib/a.bzl\n"


def test_error_inside_a_macro_points_into_the_bzl_file(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": 'load("//lib:defs.bzl", "twice")\n\ntwice(name = "a", content = "x")\n',
        "lib/defs.bzl": build_file("""
            def twice(name, content):
                write_file(name = name, out = name + ".txt", content = content)
                write_file(name = name + "2", out = name + "2.txt", contnt = content)
        """),
    })
    assert fails(ws, "//pkg:a") == (
        "lib/defs.bzl:3:5: error: write_file //pkg:a2: unknown attribute 'contnt' (did you mean 'content'?)\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("//pkg:a b", "invalid target name 'a b' in label '//pkg:a b'"),
        ("//pkg:../x", "invalid target name '../x' in label '//pkg:../x'"),
        ("//pk g:x", "invalid package 'pk g' in label '//pk g:x'"),
        ("//pkg:", "invalid target name '' in label '//pkg:'"),
    ],
)
def test_invalid_label_in_a_build_file(workspace: WorkspaceFactory, text: str, message: str) -> None:
    ws = workspace({
        "pkg/BUILD": f'write_file(name = "x", out = "x.txt")\nfilegroup(\n    name = "a",\n    srcs = ["{text}"],\n)\n',
    })
    assert fails(ws, "//pkg:a") == f"pkg/BUILD:4:13: error: filegroup //pkg:a: {message}\n"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("//pkg:a:b", "invalid target name 'a:b' in label '//pkg:a:b'"),
        ("//pkg:../x", "invalid target name '../x' in label '//pkg:../x'"),
        ("///pkg", "invalid package '/pkg' in label '///pkg'"),
    ],
)
def test_invalid_label_on_the_command_line(workspace: WorkspaceFactory, pattern: str, message: str) -> None:
    ws = workspace({"pkg/BUILD": 'write_file(name = "a", out = "a.txt")\n'})
    assert fails(ws, pattern) == f"error: {message}\n"


def test_pattern_matching_nothing(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'write_file(name = "a", out = "a.txt")\n', "empty/BUILD": ""})
    assert fails(ws, "//empty/...") == "error: pattern '//empty/...' matches no targets\n"


def test_invalid_mk_toml(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'write_file(name = "a", out = "a.txt")\n'}, toml="source_date_epok = 1\n")
    assert fails(ws, "//pkg:a") == (
        "mk.toml:1:1: error: unknown setting 'source_date_epok' (did you mean 'source_date_epoch'?)\n"
    )


def test_no_workspace(tmp_path: Path, cache_dir: Path) -> None:
    folder = tmp_path / "nowhere"
    folder.mkdir()
    result = run_mk(["build", "//x"], folder, cache_dir)
    assert result.code == EXIT_USAGE
    assert result.err.startswith("error: no workspace: "), result.err
    assert "mk.toml" in result.err


# ---- glob ---------------------------------------------------------------------------------------


def test_glob_with_excludes(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "pkg/BUILD": build_file("""
            genrule(
                name = "list",
                srcs = glob(["**/*.txt"], exclude = ["skip.txt", "sub/**/drop*"]),
                outs = ["list.out"],
                cmd = "echo $(SRCS) > $@",
            )
        """),
        "pkg/a.txt": "a", "pkg/b.txt": "b", "pkg/skip.txt": "s", "pkg/notes.md": "n",
        "pkg/sub/c.txt": "c", "pkg/sub/deep/drop1.txt": "d", "pkg/sub/deep/e.txt": "e",
        "pkg/inner/BUILD": "", "pkg/inner/d.txt": "in a subpackage",
        "pkg/.hidden/h.txt": "hidden",
    })
    ws.build("//pkg:list")
    assert ws.read("mk-out/pkg/list.out") == "pkg/a.txt pkg/b.txt pkg/sub/c.txt pkg/sub/deep/e.txt\n"


def test_glob_that_must_match(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'filegroup(name = "a", srcs = glob(["*.c"], allow_empty = False))\n'})
    assert fails(ws, "//pkg:a") == "pkg/BUILD:1:30: error: glob(['*.c']) matched no files and allow_empty is False\n"


def test_glob_cannot_leave_the_package(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'filegroup(name = "a", srcs = glob(["../*.txt"]))\n'})
    assert fails(ws, "//pkg:a") == "pkg/BUILD:1:30: error: glob(): pattern '../*.txt' must stay inside the package\n"


# ---- labels and patterns ------------------------------------------------------------------------

LABELS_WORKSPACE = {
    "BUILD": 'write_file(name = "top", out = "top.txt", content = "top\\n")\n',
    "lib/BUILD": build_file("""
        write_file(name = "lib", out = "lib.txt", content = "lib\\n")
        write_file(name = "extra", out = "extra.txt", content = "extra\\n")
    """),
    "app/BUILD": build_file("""
        genrule(
            name = "app",
            srcs = ["//lib", ":part", "//lib:extra", "//:top", "data.txt", "//app:data2.txt"],
            outs = ["app.txt"],
            cmd = "cat $(SRCS) > $@",
        )
        write_file(name = "part", out = "part.txt", content = "part\\n")
    """),
    "app/data.txt": "data\n",
    "app/data2.txt": "data2\n",
    "app/sub/BUILD": 'write_file(name = "deep", out = "deep.txt", content = "deep\\n")\n',
    # Never packages: hidden folders and mk-out/ at the root.
    ".hidden/BUILD": "this is not starlark",
    "mk-out/stale/BUILD": "nor this",
}


def built_paths(stdout: str) -> list[str]:
    return sorted(stdout.splitlines()[:-1])


def test_label_forms_in_attributes(workspace: WorkspaceFactory) -> None:
    ws = workspace(LABELS_WORKSPACE)
    result = ws.build("//app:app")
    assert built_paths(result.out) == ["mk-out/app/app.txt"]
    # //lib means //lib:lib; :part is //app:part; sources by plain name and by absolute label.
    assert ws.read("mk-out/app/app.txt") == "lib\npart\nextra\ntop\ndata\ndata2\n"


@pytest.mark.parametrize(
    ("pattern", "outputs"),
    [
        ("//app:app", ["mk-out/app/app.txt"]),
        ("//lib", ["mk-out/lib/lib.txt"]),
        ("//lib:all", ["mk-out/lib/extra.txt", "mk-out/lib/lib.txt"]),
        ("//:top", ["mk-out/top.txt"]),
        ("//app/...", ["mk-out/app/app.txt", "mk-out/app/part.txt", "mk-out/app/sub/deep.txt"]),
        ("//...", [
            "mk-out/app/app.txt", "mk-out/app/part.txt", "mk-out/app/sub/deep.txt",
            "mk-out/lib/extra.txt", "mk-out/lib/lib.txt", "mk-out/top.txt",
        ]),
    ],
)
def test_patterns_on_the_command_line(workspace: WorkspaceFactory, pattern: str, outputs: list[str]) -> None:
    ws = workspace(LABELS_WORKSPACE)
    result = ws.build(pattern)
    assert built_paths(result.out) == outputs
    for path in outputs:
        assert (ws.root / path).is_file()


@pytest.mark.parametrize(
    ("pattern", "outputs"),
    [
        (":app", ["../mk-out/app/app.txt"]),
        ("app", ["../mk-out/app/app.txt"]),
        (":all", ["../mk-out/app/app.txt", "../mk-out/app/part.txt"]),
        ("...", ["../mk-out/app/app.txt", "../mk-out/app/part.txt", "../mk-out/app/sub/deep.txt"]),
        ("sub:deep", ["../mk-out/app/sub/deep.txt"]),
        ("sub/...", ["../mk-out/app/sub/deep.txt"]),
        ("//lib", ["../mk-out/lib/lib.txt"]),
    ],
)
def test_patterns_are_relative_to_the_current_folder(workspace: WorkspaceFactory, pattern: str,
                                                     outputs: list[str]) -> None:
    """As in Bazel: from inside app/, `:app` is //app:app (the printed paths are relative to app/ too)."""
    ws = workspace(LABELS_WORKSPACE)
    result = subprocess.run([MK, "build", pattern], cwd=ws.root / "app", env=mk_env(ws.cache_dir),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert built_paths(result.stdout) == outputs


def test_pattern_made_absolute() -> None:
    assert Pattern.absolute(":web", "web") == "//web:web"
    assert Pattern.absolute("web", "web") == "//web:web"
    assert Pattern.absolute("...", "web") == "//web/..."
    assert Pattern.absolute("sub:x", "web") == "//web/sub:x"
    assert Pattern.absolute("//other:x", "web") == "//other:x"
    assert Pattern.absolute("examples:sshd", "") == "//examples:sshd"


def test_target_count_covers_the_closure(workspace: WorkspaceFactory) -> None:
    ws = workspace(LABELS_WORKSPACE)
    summary = parse_summary(ws.build("//app:app").out)
    assert (summary.targets, summary.actions) == (5, 5)  # app, part, lib, extra, top


def test_label_parse() -> None:
    assert Label.parse("//pkg/sub:name") == Label("pkg/sub", "name")
    assert Label.parse("//pkg/sub") == Label("pkg/sub", "sub")
    assert Label.parse("//:root") == Label("", "root")
    assert Label.parse(":name", "pkg") == Label("pkg", "name")
    assert Label.parse("file.txt", "pkg") == Label("pkg", "file.txt")
    assert Label.parse("dir/file.txt", "pkg") == Label("pkg", "dir/file.txt")
    assert str(Label("pkg", "name")) == "//pkg:name"
    assert str(Label("", "name")) == "//:name"


@pytest.mark.parametrize(
    "text", ["//", "//pkg:", "//pkg:a b", "//../x:y", "//pkg/./x:y", "//pkg:../x", ":name", "pkg:name", "/abs"]
)
def test_label_parse_rejects(text: str) -> None:
    with pytest.raises(LabelError):
        Label.parse(text)  # no current package: relative forms are invalid too


def test_pattern_parse() -> None:
    assert Pattern.parse("//...") == Pattern("", None, True)
    assert Pattern.parse("//pkg/...") == Pattern("pkg", None, True)
    assert Pattern.parse("//pkg:all") == Pattern("pkg", None, False)
    assert Pattern.parse("//pkg") == Pattern("pkg", "pkg", False)
    assert Pattern.parse("//pkg:x") == Pattern("pkg", "x", False)
    assert Pattern.parse("pkg:x") == Pattern("pkg", "x", False)
    assert Pattern.parse("//pkg/...").covers_package("pkg/sub")
    assert not Pattern.parse("//pkg/...").covers_package("pkgx")
    assert Pattern.parse("//...").covers_package("anything/at/all")
