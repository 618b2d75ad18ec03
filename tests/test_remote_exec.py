"""Remote execution against a real BuildGrid server (PostgreSQL and `bgd`, on 127.0.0.1) with real
`mk worker` processes, each with a cache of its own.

The workspaces run their commands on a locked toolchain (this machine's bash and coreutils,
packaged offline as in test_sandbox.py): only such actions leave the machine. Outputs are
compared byte for byte with a local build of the same graph.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from buildgrid_fixtures import (
    KEEPALIVE_SECONDS,
    BuildGrid,
    WorkerProcess,
    buildgrid_server,
    free_port,
    start_worker,
    workers,
)
from conftest import MIRROR_SECONDS, MK, Workspace, WorkspaceFactory, mk_env, parse_summary, run_mk
from debrepo import Repo
from test_sandbox import BUILD, host_tools_deb, publish

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parent.parent

GENRULES = 200
LOCAL_ACTIONS = 2  # the toolchain's own: its package fetched and unpacked, then merged, here, in-process


def chain_graph(chains: int = 20, links: int = 10) -> str:
    """Genrules in chains, each link hashing the one before it (20 x 10: two hundred)."""
    rules = []
    for chain in range(chains):
        for link in range(links):
            src = '"seed.txt"' if link == 0 else f'":g{chain}_{link - 1}"'
            cmd = f"(cat $(SRCS); echo {chain}.{link}) | sha256sum | cut -c1-32 > $@"
            rules.append(f'genrule(name = "g{chain}_{link}", srcs = [{src}], outs = ["g{chain}_{link}.txt"], '
                         f'cmd = "{cmd}")')
    return "\n".join(rules) + "\n"


GRAPH = chain_graph()
SLEEPERS = 16
SLEEPY = "\n".join(
    f'genrule(name = "s{i}", srcs = ["seed.txt"], outs = ["s{i}.txt"], cmd = "sleep 1; (cat $<; echo {i}) > $@")'
    for i in range(SLEEPERS)
) + "\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return publish(tmp_path_factory.mktemp("tools") / "repo", host_tools_deb("1.0", extra=("sleep",)))


@pytest.fixture(scope="module")
def grid() -> Iterator[BuildGrid]:
    with buildgrid_server() as server:
        yield server


@pytest.fixture(scope="module")
def two_workers(grid: BuildGrid, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[WorkerProcess]]:
    with workers(grid.url, tmp_path_factory.mktemp("workers"), 2) as started:
        yield started


def remote_workspace(workspace: WorkspaceFactory, repo: Repo, name: str, graph: str = GRAPH,
                     executor: str | None = None) -> Workspace:
    toml = f'toolchain = "//tc:tools"\ndebian_mirror = "{repo.url}"\n'
    if executor is not None:
        toml += f'remote_executor = "{executor}"\n'
    ws = workspace({"tc/BUILD": BUILD.format(keyring=repo.keyring), "g/BUILD": graph, "g/seed.txt": "seed\n"},
                   name=name, toml=toml)
    locked = ws.mk("lock", "//tc:tools")
    assert locked.code == 0, locked
    return ws


def test_a_200_genrule_graph_built_remotely_gives_the_bytes_of_a_local_build(
        workspace: WorkspaceFactory, repo: Repo, grid: BuildGrid, two_workers: list[WorkerProcess],
        tmp_path: Path) -> None:
    local = remote_workspace(workspace, repo, "local")
    built = local.mk("build", "//g:all", "-j", "2", timeout=300)
    assert built.code == 0, built.err
    remote = remote_workspace(workspace, repo, "remote", executor=grid.url)
    built = remote.mk("build", "//g:all", "-j", "2", env=fresh_cache(tmp_path, "remote"), timeout=300)
    assert built.code == 0, f"{built.err}\n--- worker0:\n{two_workers[0].text()[-3000:]}"
    summary = parse_summary(built.out)
    assert (summary.executed, summary.cached) == (GENRULES + LOCAL_ACTIONS, 0), built.out
    assert f": {GENRULES} actions executed, 0 from its action cache" in remote_line(built.err)
    # BuildGrid offers SHA-256 only (GetCapabilities): mk says that is what blobs travel under.
    assert f", digests SHA-256: {GENRULES} actions executed" in remote_line(built.err)
    # The workers said when they started, ran and finished each action: the report splits the time.
    assert re.search(r"; per action beyond its command \(median ms\): \d+ on the worker, \d+ in the server "
                     r"and the network$", remote_line(built.err)), built.err
    assert len(outputs(local)) == GENRULES
    assert outputs(remote) == outputs(local)


def test_a_second_build_from_an_empty_cache_executes_nothing(
        workspace: WorkspaceFactory, repo: Repo, grid: BuildGrid, two_workers: list[WorkerProcess],
        tmp_path: Path) -> None:
    ws = remote_workspace(workspace, repo, "ws", graph=chain_graph(4, 5), executor=grid.url)
    first = ws.mk("build", "//g:all", env=fresh_cache(tmp_path, "first"), timeout=120)
    assert first.code == 0, first.err
    placed = outputs(ws)
    again = ws.mk("build", "//g:all", env=fresh_cache(tmp_path, "second"), timeout=120)
    assert again.code == 0, again.err
    summary = parse_summary(again.out)
    assert (summary.executed, summary.remote) == (LOCAL_ACTIONS, 20), again.out
    assert remote_line(again.err).endswith(": 0 actions executed, 20 from its action cache")  # nothing timed
    assert outputs(ws) == placed
    # The same cache again: no network at all, nothing executed.
    noop = ws.mk("build", "//g:all", env=fresh_cache(tmp_path, "second", clear=False), timeout=120)
    assert parse_summary(noop.out).executed == 0, noop.out
    assert "remote executor" not in noop.err


@pytest.mark.parametrize("how", ["killed", "stopped", "stopped-holding"])
def test_a_worker_killed_or_stopped_mid_build_leaves_the_build_to_finish(
        workspace: WorkspaceFactory, repo: Repo, grid: BuildGrid, tmp_path: Path, how: str) -> None:
    """Killed outright, its leases go to the other worker when its session expires; stopped
    (SIGTERM, as Ctrl-C), it kills its commands and hands their leases back at once, those it
    holds ready too (`--prefetch`)."""
    ws = remote_workspace(workspace, repo, "ws", graph=SLEEPY.replace("echo", f"echo {how}"), executor=grid.url)
    doomed = start_worker(grid.url, tmp_path, "doomed", capacity=1, prefetch=1) if how == "stopped-holding" \
        else start_worker(grid.url, tmp_path, "doomed", capacity=4)
    survivor = start_worker(grid.url, tmp_path, "survivor", capacity=4)
    try:
        doomed.wait_ready()
        survivor.wait_ready()
        with subprocess.Popen([MK, "build", "//g:all", "-j", "1"], cwd=ws.root, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=mk_env(tmp_path / "client-cache")) as build:
            _wait_for_a_lease(doomed)
            code = doomed.stop(signal.SIGKILL if how == "killed" else signal.SIGTERM)
            out, err = build.communicate(timeout=KEEPALIVE_SECONDS * 6 + 60)
        assert build.returncode == 0, f"{err}\n--- survivor:\n{survivor.text()}"
        assert parse_summary(out).executed == SLEEPERS + LOCAL_ACTIONS, out
        for i in range(SLEEPERS):
            assert ws.read(f"mk-out/g/s{i}.txt") == f"seed\n{how} {i}\n"
        if how != "killed":
            assert code == 0 and re.search(r"stopped; [1-9]\d* running leases? handed back", doomed.text()), \
                doomed.text()
            assert not list((doomed.cache / "tmp").glob("*lease-*"))  # no half-made sandbox left behind
    finally:
        doomed.stop(signal.SIGKILL)
        survivor.stop()


def test_a_worker_holding_a_lease_ready_still_runs_one_at_a_time(
        workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    """`--capacity 1 --prefetch 1`: two leases taken, one command (one bubblewrap child of the
    worker) at a time; the held one starts when the other's command ends."""
    sleepers = 4
    with buildgrid_server() as own:
        ws = remote_workspace(workspace, repo, "ws", graph="\n".join(SLEEPY.splitlines()[:sleepers]) + "\n",
                              executor=own.url)
        holder = start_worker(own.url, tmp_path, "holder", capacity=1, prefetch=1)
        try:
            holder.wait_ready()
            assert "1 lease at a time, 1 more held ready" in holder.text()
            most, started = 0, time.monotonic()
            with subprocess.Popen([MK, "build", "//g:all", "-j", "1"], cwd=ws.root, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=mk_env(tmp_path / "client-cache")) as build:
                while build.poll() is None:
                    most = max(most, _sandboxes(holder.process.pid))
                    time.sleep(0.01)
                out, err = build.communicate()
            assert build.returncode == 0, err
            assert most == 1
            assert time.monotonic() - started >= sleepers  # one sleep after another
            assert parse_summary(out).executed == sleepers + LOCAL_ACTIONS, out
            for i in range(sleepers):
                assert ws.read(f"mk-out/g/s{i}.txt") == f"seed\n{i}\n"
        finally:
            holder.stop()


def _sandboxes(pid: int) -> int:
    """How many bubblewrap processes `pid` has started that run now."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, _, rest = stat.read_text().rpartition(")")
        except OSError:
            continue  # (gone meanwhile)
        fields = rest.split()
        count += name.endswith("(bwrap") and fields[1] == str(pid) and fields[0] != "Z"
    return count


def _wait_for_a_lease(worker: WorkerProcess, seconds: float = 60) -> None:
    """Until the worker runs an action: a lease's scratch folder appears in its cache."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(p.name.split("-", 1)[-1].startswith("lease-") for p in (worker.cache / "tmp").glob("*")):
            return
        time.sleep(0.05)
    pytest.fail(f"the worker took no lease within {seconds:.0f} s:\n{worker.text()}")


def test_a_wrong_instance_name_is_a_clear_error(
        workspace: WorkspaceFactory, repo: Repo, grid: BuildGrid, tmp_path: Path) -> None:
    ws = remote_workspace(workspace, repo, "ws", graph=chain_graph(1, 1), executor=grid.url)
    started = time.monotonic()
    result = ws.mk("build", "//g:all", env={**fresh_cache(tmp_path, "c"), "MK_REMOTE_INSTANCE": "nope"})
    assert result.code == 1, result
    assert time.monotonic() - started < 30
    assert f"the remote executor {grid.url} (instance 'nope') refused" in result.err, result.err
    assert "nope" in result.err.split("refused", 1)[1], result.err


def test_a_result_naming_a_blob_the_server_lost_is_run_again(
        workspace: WorkspaceFactory, repo: Repo, grid: BuildGrid, two_workers: list[WorkerProcess],
        tmp_path: Path) -> None:
    ws = remote_workspace(workspace, repo, "ws", graph=chain_graph(1, 2).replace("echo", "echo lost"),
                          executor=grid.url)
    env = fresh_cache(tmp_path, "c")
    first = ws.mk("build", "//g:all", env=env, timeout=120)
    assert first.code == 0, first.err
    placed = outputs(ws)
    content = placed["g/g0_1.txt"]
    on_server = grid.folder / "cas" / "cas" / "objects" / _blob_path(content)
    here = tmp_path / "cache-c" / "cas" / blake3.blake3(content).hexdigest()[:2] / blake3.blake3(content).hexdigest()
    assert on_server.is_file() and here.is_file()
    # The server loses it, and so does this machine's cache (as gc would); mk-out is cleaned.
    on_server.unlink()
    here.unlink()
    assert ws.mk("clean").code == 0
    again = ws.mk("build", "//g:all", env=fresh_cache(tmp_path, "c", clear=False), timeout=120)
    assert again.code == 0, again.err
    assert "does not have blob" in again.err and "running what made it again" in again.err, again.err
    assert outputs(ws) == placed
    assert on_server.is_file()  # made again, by a worker


def test_a_result_the_server_finds_incomplete_is_not_used(
        workspace: WorkspaceFactory, repo: Repo, grid: BuildGrid, two_workers: list[WorkerProcess],
        tmp_path: Path) -> None:
    ws = remote_workspace(workspace, repo, "ws", graph=chain_graph(1, 2).replace("echo", "echo gone"),
                          executor=grid.url)
    first = ws.mk("build", "//g:all", env=fresh_cache(tmp_path, "first"), timeout=120)
    assert first.code == 0, first.err
    placed = outputs(ws)
    (grid.folder / "cas" / "cas" / "objects" / _blob_path(placed["g/g0_1.txt"])).unlink()
    again = ws.mk("build", "//g:all", env=fresh_cache(tmp_path, "second"), timeout=120)
    assert again.code == 0, again.err
    assert ": 1 actions executed, 1 from its action cache" in remote_line(again.err)  # BuildGrid checks its cache
    assert outputs(ws) == placed


def _blob_path(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest[:2]}/{digest[2:]}"


def test_with_the_server_down_the_build_fails_in_seconds(
        workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    ws = remote_workspace(workspace, repo, "ws", graph=chain_graph(2, 2), executor=f"grpc://127.0.0.1:{_closed()}")
    started = time.monotonic()
    result = ws.mk("build", "//g:all", env=fresh_cache(tmp_path, "c"))
    assert result.code == 1, result
    assert time.monotonic() - started < 15
    assert "cannot reach the remote executor grpc://127.0.0.1:" in result.err, result.err


def test_with_the_server_down_remote_fallback_builds_here(
        workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    local = remote_workspace(workspace, repo, "local", graph=chain_graph(2, 2))
    assert local.mk("build", "//g:all").code == 0
    ws = remote_workspace(workspace, repo, "ws", graph=chain_graph(2, 2), executor=f"grpc://127.0.0.1:{_closed()}")
    result = ws.mk("build", "//g:all", "--remote-fallback", env=fresh_cache(tmp_path, "c"))
    assert result.code == 0, result.err
    assert "cannot reach the remote executor" in result.err
    assert "running the remaining actions here (--remote-fallback)" in result.err
    assert result.err.count("--remote-fallback") == 1  # said once
    assert outputs(ws) == outputs(local)


def _closed() -> int:
    """A loopback port nothing listens on."""
    port: int = free_port()
    return port


def test_a_worker_without_bubblewrap_refuses_to_start(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    started = time.monotonic()
    result = subprocess.run([MK, "worker", "--remote", f"grpc://127.0.0.1:{_closed()}"], capture_output=True,
                            text=True, timeout=60, env=mk_env(tmp_path / "cache", {"PATH": str(empty)}))
    assert result.returncode == 2, result
    assert "bwrap is not on PATH" in result.stderr and "apt-get install bubblewrap" in result.stderr, result.stderr
    assert time.monotonic() - started < 30


def fresh_cache(tmp_path: Path, name: str, clear: bool = True) -> dict[str, str]:
    """The environment of a build on a machine of its own: an empty cache named `name`."""
    folder = tmp_path / f"cache-{name}"
    assert not (clear and folder.exists()), folder
    return {"MK_CACHE_DIR": str(folder)}


def outputs(ws: Workspace) -> dict[str, bytes]:
    root = ws.root / "mk-out"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and not p.name.startswith(".mk-")}


def remote_line(err: str) -> str:
    found = re.search(r"^mk: remote executor .*$", err, re.M)
    assert found, err
    return found.group(0)


def test_a_genrule_marked_local_runs_here_and_never_asks_the_server(
        workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    graph = 'genrule(name = "here", srcs = ["seed.txt"], outs = ["here.txt"], cmd = "cat $< > $@", local = True)\n'
    ws = remote_workspace(workspace, repo, "ws", graph=graph, executor=f"grpc://127.0.0.1:{_closed()}")
    result = ws.mk("build", "//g:here", env=fresh_cache(tmp_path, "c"))
    assert result.code == 0, result.err  # the executor is unreachable, and no action needed it
    assert ws.read("mk-out/g/here.txt") == "seed\n"
    assert "remote executor" not in result.err


@pytest.mark.mirror
@pytest.mark.timeout(2 * MIRROR_SECONDS + 120)
def test_the_examples_built_remotely_give_the_bytes_of_a_local_build(
        grid: BuildGrid, two_workers: list[WorkerProcess], tmp_path: Path) -> None:
    """//examples (the cheap one: its genrules run on //examples:toolchain, a locked Debian set)."""
    placed = {}
    for name, extra in (("local", {}), ("remote", {"MK_REMOTE_EXECUTOR": grid.url})):
        root = tmp_path / name
        root.mkdir()
        shutil.copy(REPO / "mk.toml", root / "mk.toml")
        shutil.copytree(REPO / "examples", root / "examples")
        result = run_mk(["build", "//examples", "-j", "2"], root, tmp_path / f"cache-{name}", extra,
                        timeout=MIRROR_SECONDS, what="downloads the toolchain from the mirror and builds")
        assert result.code == 0, result.err
        placed[name] = outputs(Workspace(root, tmp_path / f"cache-{name}"))
        if name == "remote":
            executed = re.search(r": (\d+) actions executed", remote_line(result.err))
            assert executed is not None and int(executed.group(1)) >= 2, result.err  # motd and file_list, at least
    assert placed["remote"] == placed["local"]
    assert len(placed["local"]) >= 6


def test_a_server_restart_mid_build_is_waited_out_by_workers_and_client(
        workspace: WorkspaceFactory, repo: Repo, grid: BuildGrid, tmp_path: Path) -> None:
    ws = remote_workspace(workspace, repo, "ws", graph=SLEEPY.replace("echo", "echo restart"), executor=grid.url)
    with workers(grid.url, tmp_path, 2, capacity=4) as started, subprocess.Popen(
            [MK, "build", "//g:all", "-j", "1"], cwd=ws.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=mk_env(tmp_path / "client-cache")) as build:
        _wait_for_a_lease(started[0])
        grid.stop_server()  # its database stays up: sessions and queued jobs survive
        time.sleep(1)
        grid.start_server()
        out, err = build.communicate(timeout=240)
    assert build.returncode == 0, f"{err}\n--- worker0:\n{started[0].text()}\n--- bgd:\n{grid.log_tail()}"
    assert parse_summary(out).executed == SLEEPERS + LOCAL_ACTIONS, out
    for i in range(SLEEPERS):
        assert ws.read(f"mk-out/g/s{i}.txt") == f"seed\nrestart {i}\n"


def test_ctrl_c_cancels_the_remote_actions_and_their_workers_stop_them(
        workspace: WorkspaceFactory, repo: Repo, grid: BuildGrid, tmp_path: Path) -> None:
    graph = SLEEPY.replace("sleep 1", "sleep 60").replace("echo", "echo cancelled")
    ws = remote_workspace(workspace, repo, "ws", graph=graph, executor=grid.url)
    with workers(grid.url, tmp_path, 1, capacity=2) as (worker,), subprocess.Popen(
            [MK, "build", "//g:all"], cwd=ws.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=mk_env(tmp_path / "client-cache")) as build:
        _wait_for_a_lease(worker)
        started = time.monotonic()
        build.send_signal(signal.SIGINT)
        _, err = build.communicate(timeout=60)
        assert build.returncode == 130, err
        assert "interrupted; nothing partial was kept" in err
        deadline = time.monotonic() + 30
        while "was cancelled; stopping it" not in worker.text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "was cancelled; stopping it" in worker.text(), worker.text()
        assert time.monotonic() - started < 30  # not the 60 s its commands would have slept
        assert worker.process.poll() is None  # the worker carries on, for the next build
        leftovers = deadline + 10
        while list((worker.cache / "tmp").glob("*lease-*")) and time.monotonic() < leftovers:
            time.sleep(0.1)
        assert not list((worker.cache / "tmp").glob("*lease-*"))


def test_an_input_the_server_lost_before_a_worker_read_it_is_uploaded_again(
        workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    graph = 'genrule(name = "copy", srcs = ["seed.txt"], outs = ["copy.txt"], cmd = "cat $< > $@")\n'
    with buildgrid_server() as own:  # no worker yet: the action waits in the queue
        ws = remote_workspace(workspace, repo, "ws", graph=graph, executor=own.url)
        ws.write("g/seed.txt", "an input about to be lost\n")
        seed = own.folder / "cas" / "cas" / "objects" / _blob_path(b"an input about to be lost\n")
        with subprocess.Popen([MK, "build", "//g:copy"], cwd=ws.root, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=mk_env(tmp_path / "client-cache")) as build:
            deadline = time.monotonic() + 60
            while not seed.is_file() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert seed.is_file(), "the client did not upload its input"
            time.sleep(1)  # its Execute follows at once
            seed.unlink()
            worker = start_worker(own.url, tmp_path, "late")
            try:
                _, err = build.communicate(timeout=120)
            finally:
                worker.stop()
        assert build.returncode == 0, f"{err}\n--- worker:\n{worker.text()}"
        assert ws.read("mk-out/g/copy.txt") == "an input about to be lost\n"
        assert seed.is_file()  # uploaded again
