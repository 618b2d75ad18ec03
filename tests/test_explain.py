"""`mk explain`: why each action of the last build ran."""

from __future__ import annotations

import textwrap
from pathlib import Path

import blake3
import pytest
from conftest import HOST_TOOLS, Workspace, WorkspaceFactory, parse_summary

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

    ws.write("mk.toml", HOST_TOOLS + "source_date_epoch = 12345\n")
    ws.build("//pkg:b")
    assert explain(ws) == ["Genrule //pkg:a: parameter 'env' changed", "Genrule //pkg:b: parameter 'env' changed"]


def test_host_tools_changed_when_the_package_database_does(ws: Workspace, tmp_path: Path) -> None:
    """With toolchain = "host", the key holds the digest of the host's package database: a package
    installed or upgraded on the host reruns exactly the commands that use the host's tools."""
    database = tmp_path / "status"
    database.write_text("Package: bash\nVersion: 5.2.15-2+b2\n")
    ws.write("mk.toml", HOST_TOOLS + f'host_package_database = "{database}"\n')
    ws.build("//pkg:b")
    before = database.read_bytes()
    database.write_text("Package: bash\nVersion: 5.2.15-2+b7\n")
    result = ws.build("//pkg:b")
    assert parse_summary(result.out).executed == 2
    after = database.read_bytes()
    changed = f"({short(before)} -> {short(after)})"
    assert explain(ws) == [f'Genrule //pkg:a: the host\'s tools (toolchain = "host") changed {changed}',
                           f'Genrule //pkg:b: the host\'s tools (toolchain = "host") changed {changed}']


def test_a_failed_action_is_explained(ws: Workspace) -> None:
    ws.build("//pkg:a")
    ws.write("pkg/BUILD", BUILD.replace("cp $< $@", "false"))
    failed = ws.mk("build", "//pkg:a")
    assert failed.code == 1
    assert "error: Genrule //pkg:a failed (exit code 1)\n  command: false\n" in failed.err, failed.err
    assert explain(ws, "//pkg:a") == ["Genrule //pkg:a: command changed"]
