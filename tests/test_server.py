"""The resident build server: same results as a build in the `mk` process, changes seen through
inotify, and a server that stops, restarts or is killed leaving everything consistent."""

from __future__ import annotations

import dataclasses
import marshal
import os
import re
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    MK,
    SUBPROCESS_TIMEOUT,
    Result,
    Workspace,
    WorkspaceFactory,
    assert_cache_is_sound,
    mk_env,
    parse_summary,
)

from mk.engine import resident

SERVER = {"MK_SERVER": "1"}

GRAPH = {
    "pkg/BUILD": textwrap.dedent("""
        genrule(name = "count", srcs = ["leaf1.txt"], outs = ["count.txt"], cmd = "wc -l < $< > $@")
        genrule(name = "upper", srcs = ["leaf2.txt"], outs = ["upper.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "files", srcs = glob(["data/*.txt"]), outs = ["files.txt"], cmd = "cat $(SRCS) > $@")
        genrule(name = "top", srcs = [":count", ":upper", ":files"], outs = ["top.txt"], cmd = "cat $(SRCS) > $@")
    """),
    "pkg/leaf1.txt": "one\ntwo\n",
    "pkg/leaf2.txt": "abc\n",
    "pkg/data/a.txt": "a\n",
    "lib/BUILD": 'genrule(name = "lib", srcs = ["lib.sh"], outs = ["lib.out"], cmd = "sh $< > $@")\n',
    "lib/lib.sh": "echo lib\n",
}

# Actions that each sleep, so a build is still running when the test acts on it.
SLOW = {
    "slow/BUILD": "".join(
        f'genrule(name = "s{i}", srcs = ["in.txt"], outs = ["s{i}.txt"], '
        f'cmd = "sleep 0.4; cat $< > $@; echo {i} >> $@")\n' for i in range(12)),
    "slow/in.txt": "input\n",
}


def own_cache(ws: Workspace, tmp_path: Path) -> Workspace:
    """`ws` with a cache of its own, so that it takes nothing from another workspace's builds."""
    cache = tmp_path / f"cache-{ws.root.name}"
    cache.mkdir()
    return dataclasses.replace(ws, cache_dir=cache)


def served(ws: Workspace, *args: str, env: dict[str, str] | None = None) -> Result:
    return ws.mk(*args, env={**SERVER, **(env or {})})


def folder_of(ws: Workspace) -> str:
    return resident.run_dir(ws.cache_dir, ws.root.resolve())


def server_pid(ws: Workspace) -> int:
    with open(os.path.join(folder_of(ws), resident.PID), encoding="ascii") as f:
        return int(f.read())


def wait_for(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting ({seconds} s) for {what}"
        time.sleep(0.05)


@pytest.fixture
def stop_servers(tmp_path: Path) -> Iterator[list[Workspace]]:
    """Workspaces whose servers the test leaves running are stopped at its end."""
    started: list[Workspace] = []
    yield started
    for ws in started:
        resident.stop(folder_of(ws))


def outputs(ws: Workspace) -> dict[str, tuple[int, bytes]]:
    """Every file under mk-out: its mode and bytes."""
    out = ws.root / "mk-out"
    return {str(p.relative_to(out)): (p.stat().st_mode, p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def report(result: Result) -> tuple[object, ...]:
    """What a build said, less its timing: the summary's counts and the other lines (progress
    lines without their count of finished actions, which depends on timing with -j > 1)."""
    assert result.code == 0, result.err
    summary = parse_summary(result.out)
    return (summary._replace(seconds=0.0), result.out.splitlines()[:-1],
            sorted(re.sub(r"^\[\d+/\d+\] ", "", line) for line in result.err.splitlines()))


def test_server_and_in_process_builds_give_the_same_outputs_and_summaries(
        workspace: WorkspaceFactory, stop_servers: list[Workspace], tmp_path: Path) -> None:
    here, there = workspace(GRAPH, name="here"), own_cache(workspace(GRAPH, name="there"), tmp_path)
    stop_servers.append(there)

    def both(*args: str) -> None:
        in_process, by_server = here.mk(*args), served(there, *args)
        assert report(in_process) == report(by_server), (in_process, by_server)
        assert outputs(here) == outputs(there)

    both("build", "//...")
    pid = server_pid(there)
    both("build", "//...")  # nothing changed
    for ws in (here, there):
        ws.write("pkg/leaf2.txt", "abc\ndef\n")  # a source: its two dependents run again
    both("build", "//...")
    for ws in (here, there):
        ws.write("pkg/data/b.txt", "b\n")  # a new file a glob finds: analysis again
    both("build", "//...")
    for ws in (here, there):
        ws.write("lib/BUILD", 'genrule(name = "lib", srcs = ["lib.sh"], outs = ["lib.out"], cmd = "sh $< > $@; '
                 'echo more >> $@")\n')
    both("build", "//lib:lib", "//pkg:top")
    both("build", "//pkg:count")
    for ws in (here, there):
        ws.write("pkg/leaf2.txt", "abc\n")  # back as it was: the cache has its dependents' results
        (ws.root / "mk-out/pkg/count.txt").unlink()  # an output removed by hand is placed again
        (ws.root / "mk-out/pkg/files.txt").write_text("A\nB\n")  # and one changed by hand (same size)
    both("build", "//...")
    assert here.mk("explain").out == served(there, "explain").out
    for ws in (here, there):
        ws.write("pkg/leaf1.txt", "one\n")  # then the other chain
    both("build", "//...")
    assert server_pid(there) == pid, "one server did every build"
    assert outputs(there)["pkg/top.txt"][1] == b"1\nABC\na\nb\n"


def test_a_file_edited_between_two_builds_is_seen_at_once(workspace: WorkspaceFactory,
                                                          stop_servers: list[Workspace]) -> None:
    ws = workspace(GRAPH)
    stop_servers.append(ws)
    served(ws, "build", "//pkg:upper")
    for text in ("x\n", "y\n", "z\n"):  # same size, same second: only inotify tells
        ws.write("pkg/leaf2.txt", text)
        result = served(ws, "build", "//pkg:upper")
        assert parse_summary(result.out).executed == 1
        assert (ws.root / "mk-out/pkg/upper.txt").read_text() == text.upper()
    assert parse_summary(served(ws, "build", "//pkg:upper").out).executed == 0


def test_an_edit_made_while_no_server_ran_is_seen(workspace: WorkspaceFactory,
                                                  stop_servers: list[Workspace]) -> None:
    ws = workspace(GRAPH)
    stop_servers.append(ws)
    served(ws, "build", "//pkg:top")
    first = server_pid(ws)
    assert "stopped the build server" in served(ws, "shutdown").out
    ws.write("pkg/leaf1.txt", "one\n")
    ws.write("pkg/data/c.txt", "c\n")
    result = served(ws, "build", "//pkg:top")
    assert parse_summary(result.out).executed == 3  # count, files, top
    assert (ws.root / "mk-out/pkg/top.txt").read_text() == "1\nABC\na\nc\n"
    assert server_pid(ws) != first


def test_shutdown_stops_the_server(workspace: WorkspaceFactory) -> None:
    ws = workspace(GRAPH)
    served(ws, "build", "//pkg:upper")
    pid = server_pid(ws)
    assert resident.running(pid)
    result = served(ws, "shutdown")
    assert result.code == 0 and "stopped the build server" in result.out
    assert not resident.running(pid)
    assert not os.path.exists(os.path.join(folder_of(ws), resident.SOCKET))
    assert "no build server runs" in served(ws, "shutdown").out


def test_the_server_stops_after_its_idle_time(workspace: WorkspaceFactory) -> None:
    ws = workspace(GRAPH, toml="server_idle_seconds = 1\n")
    served(ws, "build", "//pkg:upper")
    pid = server_pid(ws)
    wait_for(lambda: not resident.running(pid), 20, "the idle server to exit")
    assert not os.path.exists(os.path.join(folder_of(ws), resident.PID))
    assert parse_summary(served(ws, "build", "//pkg:upper").out).executed == 0  # a new one, same cache


def test_a_client_of_another_mk_restarts_the_server(workspace: WorkspaceFactory,
                                                    stop_servers: list[Workspace]) -> None:
    ws = workspace(GRAPH)
    stop_servers.append(ws)
    served(ws, "build", "//pkg:upper")
    old = server_pid(ws)
    sock = resident.connect(folder_of(ws))
    assert sock is not None
    with sock:
        resident.send(sock, resident.REQUEST, marshal.dumps({
            "protocol": resident.PROTOCOL, "fingerprint": "another mk", "argv": ["build", "//pkg:upper"],
            "cwd": str(ws.root), "env": mk_env(ws.cache_dir, SERVER), "tty": [False, False]}))
        assert resident.receive(sock) == (resident.RESTART, b"")
    wait_for(lambda: not resident.running(old), 20, "the server of another mk to exit")
    result = served(ws, "build", "//pkg:upper")
    assert parse_summary(result.out).executed == 0
    assert server_pid(ws) != old


def test_builds_in_process_unless_asked(workspace: WorkspaceFactory) -> None:
    ws = workspace(GRAPH)
    for env, args in (({"MK_SERVER": "0"}, ()), ({"CI": "true", "MK_SERVER": ""}, ()), (SERVER, ("--no-server",))):
        result = ws.mk("build", *args, "//pkg:upper", env=env)
        assert result.code == 0, result.err
        assert not os.path.exists(os.path.join(folder_of(ws), resident.PID)), env


def start_slow_build(ws: Workspace) -> subprocess.Popen[str]:
    """`mk build //slow:all` through the server, once its first action has finished."""
    build = subprocess.Popen([MK, "build", "-j", "1", "//slow:all"], cwd=ws.root, env=mk_env(ws.cache_dir, SERVER),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    actions = ws.cache_dir / "ac"
    wait_for(lambda: actions.is_dir() and any(p.is_file() for p in actions.rglob("*")), SUBPROCESS_TIMEOUT,
             "the first action of the slow build")
    return build


def test_a_server_killed_mid_build_leaves_a_consistent_cache(workspace: WorkspaceFactory,
                                                             stop_servers: list[Workspace], tmp_path: Path) -> None:
    ws, reference = workspace(SLOW), own_cache(workspace(SLOW, name="reference"), tmp_path)
    stop_servers.append(ws)
    build = start_slow_build(ws)
    killed = server_pid(ws)
    os.kill(killed, signal.SIGKILL)
    _out, err = build.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert build.returncode != 0 and "the build server died" in err
    assert os.path.exists(os.path.join(folder_of(ws), resident.SOCKET)), "the killed server left its socket"
    result = served(ws, "build", "//slow:all")
    summary = parse_summary(result.out)
    assert summary.cached > 0 and summary.executed + summary.cached == 12
    assert server_pid(ws) != killed
    assert_cache_is_sound(ws.cache_dir)
    assert served(ws, "build", "--check", "//slow:all").code == 0
    assert reference.mk("build", "//slow:all").code == 0
    assert outputs(ws) == outputs(reference)


def test_ctrl_c_stops_the_build_but_not_the_server(workspace: WorkspaceFactory,
                                                   stop_servers: list[Workspace]) -> None:
    ws = workspace(SLOW)
    stop_servers.append(ws)
    build = start_slow_build(ws)
    pid = server_pid(ws)
    build.send_signal(signal.SIGINT)
    _out, err = build.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert build.returncode == 130 and "interrupted" in err
    assert resident.running(pid)
    result = served(ws, "build", "//slow:all")
    assert parse_summary(result.out).executed + parse_summary(result.out).cached == 12
    assert server_pid(ws) == pid
