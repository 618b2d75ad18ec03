"""Shared fixtures: throw-away workspaces, an isolated cache per test, and the real `mk` CLI.

Every end-to-end test runs the installed `mk` console script in a subprocess, exactly as a
user would, with `MK_CACHE_DIR` pointing at a fresh directory under the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest


def _find_mk() -> str:
    # Prefer the script installed beside this interpreter: `shutil.which` alone could pick up
    # some other `mk` on PATH (or none, when the venv is not activated).
    sibling = Path(sys.executable).parent / "mk"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which("mk")
    if found is None:
        raise RuntimeError("cannot find the `mk` console script; install the package (pip install -e .)")
    return found


MK = _find_mk()
# Every `mk` a test starts runs the command in its own process, as in CI, unless the test is about
# the resident build server (tests/test_server.py), which sets MK_SERVER=1 itself.
NO_SERVER = {"MK_SERVER": "0"}
os.environ.update(NO_SERVER)
# Tests press Ctrl-C on the processes they start (SIGINT). A suite started in the background by a
# shell without job control inherits SIGINT ignored, and so would every `mk` it starts: with a
# handler here, those get SIGINT's default again when they exec.
signal.signal(signal.SIGINT, signal.default_int_handler)
SUBPROCESS_TIMEOUT = 60
# The longest one step against the Debian mirror may take (an `mk lock`, or an image build with an
# empty cache, which downloads every package). Marked tests add up their steps' limits and set
# their own pytest timeout above the sum, so that a slow step fails with a message naming it.
MIRROR_SECONDS = 300

_SUMMARY = re.compile(
    r"^mk: (?P<targets>\d+) targets, (?P<actions>\d+) actions: (?P<executed>\d+) executed, "
    r"(?P<cached>\d+) cached \((?P<local>\d+) local, (?P<remote>\d+) remote\) in (?P<seconds>\d+\.\d+) s"
    r"(?:, for (?P<platforms>\S+(?: and \S+)*))?$"
)


class Result(NamedTuple):
    """What one `mk` run gave back; unpacks as (code, out, err)."""

    code: int
    out: str
    err: str


class Summary(NamedTuple):
    targets: int
    actions: int
    executed: int
    cached: int
    local: int
    remote: int
    seconds: float
    platforms: tuple[str, ...] = ()  # named when not the host's platform alone


def require(tool: str, also_in: str | None = None) -> str:
    """The path of a host tool a test needs (looked for on PATH, then in `also_in`). Without it the
    test is skipped, except in CI (CI set), where every tool must be there: it fails."""
    path = shutil.which(tool) or (shutil.which(tool, path=also_in) if also_in else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; scripts/setup.sh should have installed it")
        pytest.skip(f"{tool} is not installed")
    return path


def parse_summary(stdout: str) -> Summary:
    """Parse the summary line, which must be the last line of `mk build`'s stdout."""
    lines = stdout.rstrip("\n").splitlines()
    assert lines, "mk build printed nothing on stdout"
    match = _SUMMARY.match(lines[-1])
    assert match, f"last stdout line is not the summary line: {lines[-1]!r}"
    g = match.groupdict()
    summary = Summary(
        int(g["targets"]), int(g["actions"]), int(g["executed"]), int(g["cached"]),
        int(g["local"]), int(g["remote"]), float(g["seconds"]),
        tuple(g["platforms"].split(" and ")) if g["platforms"] else (),
    )
    assert summary.cached == summary.local + summary.remote, lines[-1]
    assert summary.executed + summary.cached <= summary.actions, lines[-1]
    return summary


def read_events(path: Path) -> list[dict[str, object]]:
    """The --json-events file: one JSON object per line."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def executed_labels(path: Path) -> list[str]:
    """Sorted labels of the actions that ran (not cached) according to a --json-events file."""
    return sorted(str(e["label"]) for e in read_events(path) if e["status"] == "executed")


def assert_cache_is_sound(cache_dir: Path, logs: bool = False) -> None:
    """Every local action result decodes and names output blobs (and with `logs`, a log blob) that
    exist and hash to their names, and every blob hashes to its name. (`mk cache gc` may drop a
    log that a kept result names: a hit never reads it. Until then every log is there.)"""
    from mk.cache.action_cache import ActionCache, ActionResult
    from mk.cache.cas import ContentStore

    cas, ac = ContentStore(cache_dir), ActionCache(cache_dir)
    for key in ac.all_keys():
        result = ActionResult.decode(ac.path(key).read_bytes())
        named = [(o.path, o.digest) for o in result.outputs] + ([("its log", result.log_digest)] if logs else [])
        for path, digest in named:
            assert cas.has(digest), f"action {key}: blob {digest} of {path} is missing"
            assert cas.verify(digest), f"action {key}: blob {digest} of {path} is corrupt"
    for digest in cas.digests():
        assert cas.verify(digest), f"blob {digest} is corrupt"


def assert_nothing_imported(cache_dir: Path, content: bytes) -> None:
    """After a refused archive: no blob holds the malicious member's `content`, and no tree was made."""
    from mk.cache.cas import ContentStore
    from mk.cache.tree import Tree, TreeError

    cas = ContentStore(cache_dir)
    blobs = [cas.read_bytes(digest) for digest in cas.digests()]
    assert content not in blobs, f"the content of a refused member was stored: {content!r}"
    trees = []
    for blob in blobs:
        with contextlib.suppress(TreeError):
            trees.append(Tree.decode(blob))
    assert trees == [], f"a tree was stored: {trees}"


def fake_diffoscope(folder: Path) -> dict[str, str]:
    """An environment whose PATH starts with a `diffoscope` that prints what it was given: each
    file's path and content, one line each (and exits 1, as diffoscope does on a difference)."""
    folder.mkdir(parents=True)
    script = folder / "diffoscope"
    script.write_text('#!/bin/sh\nshift 2\nfor f in "$@"; do echo "$f: $(cat "$f")"; done\nexit 1\n', encoding="utf-8")
    script.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def run_from_tar(archive: Path, member: str, scratch: Path) -> str:
    """What the program `member` of the tar `archive` prints, run on this machine from `scratch`."""
    with tarfile.open(archive) as tar:
        binary = tar.extractfile(member)
        assert binary is not None, f"{member} is not a file in {archive}"
        program = scratch / member.replace("/", "_")
        program.write_bytes(binary.read())
    program.chmod(0o755)
    return subprocess.run([program], capture_output=True, text=True, check=True).stdout


@contextlib.contextmanager
def serving_folder(folder: Path, handler: type[http.server.SimpleHTTPRequestHandler]) -> Iterator[str]:
    """`folder` over loopback HTTP with `handler` (a SimpleHTTPRequestHandler): its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def mk_env(cache_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The host environment minus every MK_* setting, plus our private cache (and no build server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MK_")}
    env["MK_CACHE_DIR"] = str(cache_dir)
    env.update(NO_SERVER)
    env.update(extra or {})
    return env


def tail(text: str, lines: int = 30) -> str:
    """The last lines of what a process wrote."""
    return "\n".join(text.splitlines()[-lines:])


def run_within(args: Sequence[str], seconds: float, what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run (text, output captured) with a deadline. Past it the process and everything it
    started (a QEMU) are killed, and the test fails with a message naming what it waited for and how
    long, rather than with a TimeoutExpired traceback."""
    with subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # something it started left its own group with our pipes
                out, err = "", ""
            pytest.fail(f"{what} did not finish within {seconds:.0f} s; its last output:\n{tail(out)}\n{tail(err)}",
                        pytrace=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_mk(
    args: list[str] | tuple[str, ...],
    cwd: Path,
    cache_dir: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = SUBPROCESS_TIMEOUT,
    what: str = "",
) -> Result:
    """`mk ARGS`; `what` says what it waits for, in the failure message if it takes over `timeout` s."""
    command = f"`mk {' '.join(args)}`"
    proc = run_within([MK, *args], timeout, f"{command} ({what})" if what else command, cwd=cwd,
                      env=mk_env(cache_dir, env), stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Workspace:
    """A temporary workspace (a folder with mk.toml) and a way to run mk in it."""

    root: Path
    cache_dir: Path

    def write(self, path: str, content: str | bytes) -> Path:
        file = self.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            file.write_bytes(content)
        else:
            file.write_text(content, encoding="utf-8")
        return file

    def read(self, path: str) -> str:
        return (self.root / path).read_text(encoding="utf-8")

    def mk(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = SUBPROCESS_TIMEOUT,
           what: str = "") -> Result:
        return run_mk(args, self.root, self.cache_dir, env, timeout, what)

    def build(self, *targets: str, events: Path | None = None, env: Mapping[str, str] | None = None) -> Result:
        """`mk build`, which must succeed; its summary line is checked to be well formed."""
        args = ["build", *targets]
        if events is not None:
            args += ["--json-events", str(events)]
        result = self.mk(*args, env=env)
        assert result.code == 0, f"mk build {' '.join(targets)} failed ({result.code}):\n{result.out}\n{result.err}"
        parse_summary(result.out)
        return result

    def age_sources(self, seconds: float = 10.0) -> None:
        """Date every file back, so the stat cache trusts it (no "racily clean" re-hash)."""
        when = time.time() - seconds
        for path in self.root.rglob("*"):
            if path.is_file():
                os.utime(path, (when, when))


WorkspaceFactory = Callable[..., Workspace]

# Unless a test names a toolchain, its commands run on the host's tools: offline and fast. Their
# results are shared through remote caches, as between identical CI machines. The sandbox's own
# tests (test_sandbox.py) use real toolchain trees, and the default of keeping host results local.
HOST_TOOLS = 'toolchain = "host"\nremote_upload_host_results = true\n'
NOT_HERMETIC = "mk: warning: this build is not hermetic"


def without_host_warning(stderr: str) -> str:
    """stderr less the warning of a build that ran commands on the host's tools."""
    return "".join(line for line in stderr.splitlines(keepends=True) if not line.startswith(NOT_HERMETIC))


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private MK_CACHE_DIR, also set for in-process calls (and MK_* settings removed)."""
    path = tmp_path / "cache"
    path.mkdir()
    for key in list(os.environ):
        if key.startswith("MK_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MK_CACHE_DIR", str(path))
    monkeypatch.setenv("MK_SERVER", NO_SERVER["MK_SERVER"])
    yield path


@pytest.fixture
def workspace(tmp_path: Path, cache_dir: Path) -> WorkspaceFactory:
    """Factory: workspace({"pkg/BUILD": "...", ...}, name="ws", toml="") -> Workspace."""
    made: set[str] = set()

    def make(files: Mapping[str, str | bytes] | None = None, name: str = "ws", toml: str = "") -> Workspace:
        assert name not in made, f"workspace {name!r} already made in this test"
        made.add(name)
        root = tmp_path / name
        root.mkdir(parents=True)
        ws = Workspace(root, cache_dir)
        ws.write("mk.toml", toml if "toolchain" in toml else HOST_TOOLS + toml)
        for path, content in (files or {}).items():
            ws.write(path, content)
        return ws

    return make
