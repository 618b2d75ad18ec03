"""The `mk` command: hands the command to the workspace's resident build server, starting one when
none runs, and streams back what it prints and its exit status (see mk.server).

It imports only the standard library and mk.engine.resident, so that a no-op build costs little
more than the interpreter's start-up. Commands that need the terminal or the host (`mk run`,
`mk watch`, `mk lock`, `mk worker`, ...), `--no-server`, `MK_SERVER=0` and CI (`CI=true`, unless
`MK_SERVER=1`) run in this process, as mk.cli, exactly as before the server existed.
"""

from __future__ import annotations

import marshal
import os
import signal
import socket
import sys
import time
from types import FrameType

if False:  # for the type checker only: typing and collections cost start-up time
    from collections.abc import Callable

from mk.engine import resident

# Commands whose whole effect is files in the workspace or cache and text on stdout and stderr.
SERVED = frozenset({"build", "image", "query", "explain", "log", "ls", "diff"})
NO_SERVER = "--no-server"
START_SECONDS = 60.0
_MARKER = "mk.toml"


def main() -> None:
    argv = sys.argv[1:]
    in_process = NO_SERVER in argv[: argv.index("--") if "--" in argv else len(argv)]
    if in_process:
        argv.remove(NO_SERVER)
    places = None if in_process or not _server_wanted(argv) else _places(os.getcwd())
    if places is None:
        _in_process(argv)
        return
    status = _through_server(argv, *places)
    if status is None:
        _in_process(argv)
        return
    sys.exit(status)


def _in_process(argv: list[str]) -> None:
    from mk.cli import main as cli_main

    sys.argv = [sys.argv[0], *argv]
    cli_main()


def _server_wanted(argv: list[str]) -> bool:
    if not argv or argv[0] not in SERVED or "--help" in argv:
        return False
    wanted = os.environ.get("MK_SERVER", "").strip().lower()
    if wanted:
        return wanted not in ("0", "false", "no")
    return os.environ.get("CI", "").strip().lower() in ("", "0", "false")


def _places(cwd: str) -> tuple[str, str] | None:
    """The workspace root and its server's run folder; None outside a workspace (mk.cli says so)."""
    folder = os.path.realpath(cwd)
    while True:
        marker = os.path.join(folder, _MARKER)
        if os.path.isfile(marker):
            return folder, resident.run_dir(_cache_root(folder, marker), folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _cache_root(workspace: str, marker: str) -> str:
    """The cache the build will use, as mk.engine.session.cache_for finds it (without importing the
    settings machinery, which costs more than the rest of the client)."""
    if env := os.environ.get("MK_CACHE_DIR"):
        return env
    with open(marker, "rb") as f:
        text = f.read()
    if b"cache_dir" in text:
        import tomllib

        try:
            setting = tomllib.loads(text.decode("utf-8")).get("cache_dir")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            setting = None  # the server reports the bad mk.toml with its line
        if isinstance(setting, str) and setting:
            return os.path.join(workspace, setting)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "mk")


def _through_server(argv: list[str], workspace: str, folder: str) -> int | None:
    """The command's exit status, run by the server; None when no server could be started (the
    caller then runs it here)."""
    request = marshal.dumps({
        "protocol": resident.PROTOCOL, "fingerprint": resident.fingerprint(), "argv": argv,
        "cwd": os.getcwd(), "env": _environment(), "tty": [sys.stdout.isatty(), sys.stderr.isatty()],
    })
    for _attempt in range(3):
        sock = resident.connect(folder) or _start(workspace, folder)
        if sock is None:
            return None
        with sock:
            resident.send(sock, resident.REQUEST, request)
            answer = _stream(sock)
        if isinstance(answer, int):
            return answer
        if answer == resident.RESTART:  # another mk's server: it is exiting; start ours
            resident.wait_until_gone(folder, START_SECONDS)
            continue
        if answer == b"started":
            print(f"mk: the build server died during the command (killed?); see {os.path.join(folder, resident.LOG)}",
                  file=sys.stderr)
            return 1
        # It closed before answering at all (it was just then stopping for being idle): again.
    return None


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    if sys.stderr.isatty() and "COLUMNS" not in env:  # the server has no terminal to ask
        size = os.get_terminal_size(sys.stderr.fileno())
        env["COLUMNS"], env["LINES"] = str(size.columns), str(size.lines)
    return env


def _stream(sock: socket.socket) -> int | bytes:
    """Copy the server's output here until its exit status, forwarding Ctrl-C (and SIGTERM) to it.
    Without an exit status: RESTART, "started" if the server died after it began, b"" before."""

    def interrupt(_signal: int, _frame: FrameType | None) -> None:
        resident.send(sock, resident.INTERRUPT)

    previous = signal.signal(signal.SIGINT, interrupt), signal.signal(signal.SIGTERM, interrupt)
    began = b""
    try:
        while (frame := resident.receive(sock)) is not None:
            kind, payload = frame
            if kind == resident.EXIT:
                return int(payload)
            if kind == resident.RESTART:
                return resident.RESTART
            began = b"started"
            stream = sys.stdout if kind == resident.STDOUT else sys.stderr
            stream.buffer.write(payload)
            stream.flush()
        return began
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def _start(workspace: str, folder: str) -> socket.socket | None:
    """Start the server of `folder` (one client at a time does) and connect to it."""
    starting = resident.lock(os.path.join(folder, resident.STARTING))
    try:
        sock = resident.connect(folder)  # another client started it meanwhile
        if sock is None and resident.server_alive(folder):  # one starting, or stopping: wait for either
            sock = _wait_for_socket(folder, None)
        if sock is not None:
            return sock
        import subprocess

        with open(os.path.join(folder, resident.LOG), "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mk.server", workspace, folder], cwd=workspace,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        return _wait_for_socket(folder, process.poll)
    finally:
        os.close(starting)


def _wait_for_socket(folder: str, exited: Callable[[], int | None] | None) -> socket.socket | None:
    """A connection to the server starting in `folder`. Given how to ask whether the process we
    started has `exited`: None (and a warning) if it fails; else None once the server is gone."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        sock = resident.connect(folder)
        if sock is not None:
            return sock
        if exited is None and not resident.server_alive(folder):
            return None  # it stopped: the caller starts another
        if exited is not None and exited() is not None:
            break
        time.sleep(0.005)
    if exited is None:
        return None
    log = os.path.join(folder, resident.LOG)
    print(f"mk: warning: the build server did not start (see {log}); building in this process", file=sys.stderr)
    return None
