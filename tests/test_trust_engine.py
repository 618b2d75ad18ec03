"""Red-team findings on the engine's side of the cache: the blobs inside a tree are checked, a
retry rebuilds what lost one, and a cached graph that was altered is never used."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from conftest import MK, Workspace, WorkspaceFactory, mk_env, parse_summary
from remote_servers import tiny_disk

from mk.cache.tree import Tree
from mk.engine.actions import Action, Artifact
from mk.engine.analysis import Analyzer
from mk.engine.errors import MkError
from mk.engine.labels import Label
from mk.engine.loader import Loader
from mk.engine.placed import RECORD
from mk.engine.rule_api import DefaultInfo, Provider, Rule, RuleContext
from mk.engine.workspace import find_workspace

BUILD = textwrap.dedent("""
    layer(name = "etc", files = {"/etc/motd": "motd", "/etc/issue": "issue"})
    cpio(name = "initramfs", src = ":etc")
""").lstrip("\n")


def outputs(ws: Workspace) -> dict[str, bytes]:
    """The files placed under mk-out (not mk's record of who placed them, which names the targets)."""
    return {str(p.relative_to(ws.root)): p.read_bytes() for p in sorted((ws.root / "mk-out").rglob("*"))
            if p.is_file() and p.name != RECORD}


def motd_blob(ws: Workspace) -> Path:
    """The stored blob of /etc/motd, a file the layer's tree references (not an output itself)."""
    tree = Tree.decode((ws.root / "mk-out/pkg/etc.tree").read_bytes())
    (digest,) = [e.digest for e in tree.entries if e.path == "etc/motd"]
    return ws.cache_dir / "cas" / digest[:2] / digest


def built(ws: Workspace) -> Workspace:
    ws.build("//pkg:initramfs", "//pkg:etc")
    return ws


def fresh(workspace: WorkspaceFactory) -> Workspace:
    return built(workspace({"pkg/BUILD": BUILD, "pkg/motd": "hello\n", "pkg/issue": "mk\n"}))


def test_a_deleted_blob_inside_a_tree_is_rebuilt(workspace: WorkspaceFactory) -> None:
    ws = fresh(workspace)
    blob = motd_blob(ws)
    expected = blob.read_bytes()
    blob.unlink()
    ws.write("pkg/BUILD", BUILD + 'tar(name = "tar", src = ":etc")\n')  # a new reader of the tree
    result = ws.build("//pkg:tar")
    # The layer's cached result is incomplete, so the layer is made again before the tar reads it.
    assert parse_summary(result.out).executed == 2
    assert result.err.splitlines() == ["[0/2] Layer //pkg:etc", "[1/2] Tar //pkg:tar"]
    assert blob.read_bytes() == expected
    assert b"hello\n" in (ws.root / "mk-out/pkg/tar.tar").read_bytes()


def test_a_flipped_byte_inside_a_tree_never_reaches_an_archive(workspace: WorkspaceFactory) -> None:
    ws = fresh(workspace)
    expected = outputs(ws)
    blob = motd_blob(ws)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    ws.write("pkg/BUILD", BUILD + 'tar(name = "tar", src = ":etc")\n')
    result = ws.mk("build", "//pkg:initramfs", "//pkg:etc", "//pkg:tar")
    assert result.code == 0, result.err
    assert {k: v for k, v in outputs(ws).items() if k in expected} == expected
    assert b"hello\n" in (ws.root / "mk-out/pkg/tar.tar").read_bytes()
    assert "Traceback" not in result.err


def test_cache_verify_drops_a_result_whose_tree_lost_a_blob(workspace: WorkspaceFactory) -> None:
    ws = fresh(workspace)
    motd_blob(ws).unlink()
    result = ws.mk("cache", "verify")
    assert result.code == 1, result.out + result.err
    dropped = [line for line in result.out.splitlines() if line.startswith("action result removed (blob missing):")]
    assert len(dropped) == 1, result.out  # the layer's: the archive's blob is whole
    assert result.out.splitlines()[-1].endswith("0 corrupt, 1 action results dropped")


def test_an_altered_cached_graph_is_never_used(workspace: WorkspaceFactory) -> None:
    ws = fresh(workspace)
    expected = outputs(ws)
    (graph,) = (ws.cache_dir / "graphs").glob("*.pickle")
    original = graph.read_bytes()
    for position in range(0, len(original), max(1, len(original) // 60)):
        altered = bytearray(original)
        altered[position] ^= 0x20
        graph.write_bytes(bytes(altered))
        result = ws.mk("build", "//pkg:initramfs", "//pkg:etc")
        assert result.code == 0 and "Traceback" not in result.err, (position, result.err)
        summary = parse_summary(result.out)
        assert (summary.targets, summary.actions, summary.executed) == (2, 2, 0), (position, result.out)
        assert outputs(ws) == expected, position


def test_a_command_edited_inside_the_cached_graph_does_not_run(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'genrule(name = "g", outs = ["g.txt"], cmd = "echo good > $@")\n'})
    ws.build("//pkg:g")
    (graph,) = (ws.cache_dir / "graphs").glob("*.pickle")
    graph.write_bytes(graph.read_bytes().replace(b"echo good", b"echo evil"))
    ws.write("pkg/BUILD", 'genrule(name = "g", outs = ["g.txt"], cmd = "echo good > $@")\n')  # same text
    (ws.root / "mk-out/pkg/g.txt").unlink()
    ws.build("//pkg:g")
    assert ws.read("mk-out/pkg/g.txt") == "good\n"


# ---- bad input: clear messages, never a traceback -------------------------------------------------


def fails_with(ws: Workspace, target: str, code: int = 2) -> str:
    result = ws.mk("build", target)
    assert result.code == code, result
    assert "Traceback" not in result.err
    parse_summary(result.out)  # the summary line still ends the output
    return result.err


def test_a_build_file_that_is_not_utf8(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": b'write_file(name = "a", out = "a.txt")\n# caf\xe9\n'})
    assert fails_with(ws, "//pkg:a") == (
        "pkg/BUILD:2:1: error: not UTF-8 text: byte 0xe9 at offset 43 cannot be decoded\n")


def test_brackets_nested_past_what_the_parser_survives(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'write_file(name = "a", out = "a.txt")\nx = ' + "[" * 3000 + "]" * 3000 + "\n"})
    assert fails_with(ws, "//pkg:a") == "pkg/BUILD:2:1: error: brackets nest deeper than 100 levels\n"


@pytest.mark.parametrize("chain", ["-" * 10000 + "1", "1 + " * 10000 + "1", "not " * 10000 + "True"])
def test_an_operator_chain_past_what_the_parser_survives(workspace: WorkspaceFactory, chain: str) -> None:
    ws = workspace({"pkg/BUILD": f'write_file(name = "a", out = "a.txt")\nx = {chain}\n'})
    assert fails_with(ws, "//pkg:a") == (
        "pkg/BUILD:2:1: error: one statement holds more than 1000 operators; split it up\n")


def test_a_source_that_is_a_directory(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'genrule(name = "a", srcs = ["d"], outs = ["a.txt"], cmd = "cp $< $@")\n',
                    "pkg/d/file": "x"})
    assert fails_with(ws, "//pkg:a") == (
        "pkg/BUILD:1:29: error: genrule //pkg:a: 'pkg/d' is a directory, not a file; name the files in it "
        "(glob() lists them)\n")


def test_a_command_with_a_nul_byte(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'genrule(name = "a", outs = ["a.txt"], cmd = "echo \\x00 > $@")\n'})
    assert fails_with(ws, "//pkg:a", code=1).splitlines()[-1] == (
        "pkg/BUILD:1:1: error: Genrule //pkg:a cannot run: its command holds a NUL byte (embedded null byte)")


def test_a_command_longer_than_the_system_allows(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": f'genrule(name = "a", outs = ["a.txt"], cmd = "true {"x" * 200000}; touch $@")\n'})
    assert fails_with(ws, "//pkg:a", code=1).splitlines()[-1] == (
        "pkg/BUILD:1:1: error: Genrule //pkg:a cannot run its command (200045 bytes): Argument list too long")


def test_a_directory_where_an_output_goes(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'write_file(name = "a", out = "a.txt", content = "x")\n'})
    (ws.root / "mk-out/pkg/a.txt").mkdir(parents=True)
    result = ws.mk("build", "//pkg:a")
    assert result.code == 2 and "Traceback" not in result.err, result
    assert result.err.splitlines()[-1] == (
        f"error: cannot place {ws.root}/mk-out/pkg/a.txt: a directory is in the way; remove it (or run `mk clean`)")
    assert parse_summary(result.out)[:3] == (1, 1, 1)  # it still counts what ran


def test_the_engine_refuses_an_output_outside_the_package(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'escape(name = "a")\n'})

    def analyze(ctx: RuleContext) -> list[Provider]:
        out = Artifact("other/../../../tmp/x", is_source=False)
        ctx.add_action(Action(owner=ctx.label, mnemonic="Escape", inputs=(), outputs=(out,), command=("true",)))
        return [DefaultInfo(files=(out,))]

    loader = Loader(find_workspace(ws.root), {"escape": Rule("escape", "Writes outside.", (), analyze)})
    with pytest.raises(MkError) as error:
        Analyzer(loader, 0).analyze(Label("pkg", "a"))
    assert str(error.value) == ("pkg/BUILD:1:1: error: escape //pkg:a: action Escape declares the output "
                                "'other/../../../tmp/x', which is outside the package's output folder")


# ---- BUILD evaluation is bounded in memory and time -------------------------------------------------


def test_a_build_file_that_needs_too_much_memory(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'x = list(range(100000000))\nwrite_file(name = "a", out = "a.txt")\n'},
                   toml="load_memory_mib = 1024\n")
    assert fails_with(ws, "//pkg:a") == (
        "error: loading failed: evaluating BUILD files needed more than 1024 MiB of memory "
        "(load_memory_mib in mk.toml)\n")


def test_a_build_file_that_runs_too_long(workspace: WorkspaceFactory) -> None:
    endless = "def spin(n):\n    for i in range(n):\n        for j in range(n):\n            pass\n\nspin(1000000)\n"
    ws = workspace({"pkg/BUILD": endless + 'write_file(name = "a", out = "a.txt")\n'}, toml="load_seconds = 2\n")
    assert fails_with(ws, "//pkg:a") == (
        "error: evaluating BUILD files took more than 2 s (load_seconds in mk.toml); stopped in pkg/BUILD\n")


# ---- what a killed mk leaves behind ------------------------------------------------------------------


def test_commands_die_with_a_killed_mk(workspace: WorkspaceFactory) -> None:
    # The command's processes live in the sandbox's pid namespace: they are found on the host by
    # the unusual duration they sleep for. (In a genrule, `$$` is a `$` for the shell.)
    marker = "301.7345"
    cmd = f"(sleep {marker}; echo late) & sleep {marker}; touch $@"
    ws = workspace({"pkg/BUILD": f'genrule(name = "slow", outs = ["slow.txt"], cmd = "{cmd}")\n'})
    mk = subprocess.Popen([MK, "build", "//pkg:slow"], cwd=ws.root, env=mk_env(ws.cache_dir),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(sleepers := processes_running(marker)) < 2:
        assert time.monotonic() < deadline and mk.poll() is None, "the command never started"
        time.sleep(0.05)
    mk.kill()
    mk.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in sleepers):
        assert time.monotonic() < deadline, f"still running after mk was killed: {sleepers}"
        time.sleep(0.05)


def processes_running(argument: str) -> list[int]:
    """Host pids of the processes with `argument` on their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if argument.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # it ended meanwhile
                pass
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")  # a zombie is gone too


def test_temp_files_of_a_killed_placement_are_removed(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'write_file(name = "a", out = "a.txt", content = "x")\n'})
    ws.build("//pkg:a")
    dead_pid = subprocess.Popen(["true"])  # a process that has ended: its pid names a killed build
    dead_pid.wait()
    leftover = ws.write("mk-out/pkg/.tmp-abc123a.txt", "half")
    marker = ws.write(f"mk-out/.mk-placing-{dead_pid.pid}", "")
    ws.build("//pkg:a")
    assert not leftover.exists() and not marker.exists()
    assert ws.read("mk-out/pkg/a.txt") == "x"


def test_temp_files_of_a_running_build_are_left_alone(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'write_file(name = "a", out = "a.txt", content = "x")\n'})
    ws.build("//pkg:a")
    writing = ws.write("mk-out/pkg/.tmp-abc123a.txt", "half")
    marker = ws.write(f"mk-out/.mk-placing-{os.getpid()}", "")  # this process is alive
    ws.build("//pkg:a")
    assert writing.exists() and marker.exists()


def test_a_full_disk_under_mk_out_is_named(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": 'write_file(name = "big", out = "big.txt", content = "x" * 200000)\n'})
    with tiny_disk(ws.root / "mk-out", "64k"):
        result = ws.mk("build", "//pkg:big")
        assert result.code == 2 and "Traceback" not in result.err, result
        assert result.err.splitlines()[-1] == (
            f"error: cannot place {ws.root}/mk-out/pkg/big.txt: the disk is full; nothing partial was kept")
        assert parse_summary(result.out)[:3] == (1, 1, 1)
        assert [p.name for p in (ws.root / "mk-out/pkg").iterdir()] == []  # no temp file left
