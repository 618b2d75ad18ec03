"""The resident build server of one workspace: `python -m mk.server WORKSPACE RUN_DIR`.

The `mk` client (mk.client) starts it on first use. It runs its clients' commands one at a time
with mk.cli, exactly as `mk --no-server` would, but with their output sent back over the socket,
and it keeps between commands what a fresh process would read again: the analysed graph, the stat
cache and the action-cache index (see mk.engine.memory), told by inotify which files changed.

It exits after `server_idle_seconds` without a command, on `mk shutdown` (SIGTERM), and when a
client of another mk asks (that client then starts its own). Killed outright, it leaves what an
interrupted `mk build` leaves: every cache and output write is atomic, so nothing is corrupt;
its socket and pid files are then stale, and the next client replaces them.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import marshal
import os
import signal
import socket
import struct
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from mk import cli
from mk.engine import resident
from mk.engine.errors import MkError
from mk.engine.memory import Memory
from mk.engine.workspace import Settings, find_workspace

CLIENT_CLOSE_SECONDS = 5.0


class _Stop(Exception):
    """SIGTERM (`mk shutdown`) while no command runs."""


class _ClientStream(io.RawIOBase):
    """sys.stdout or sys.stderr of a client's command: each write is one frame on its socket."""

    def __init__(self, sock: socket.socket, kind: bytes, tty: bool, lock: threading.Lock) -> None:
        super().__init__()
        self.sock, self.kind, self.tty, self.lock = sock, kind, tty, lock

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.tty

    def write(self, data: Any) -> int:
        payload = bytes(data)
        with self.lock, contextlib.suppress(OSError):  # a client gone: its reader interrupts the command
            resident.send(self.sock, self.kind, payload)
        return len(payload)


class Server:
    def __init__(self, workspace: Path, folder: str, idle_seconds: float) -> None:
        self.workspace, self.folder, self.idle_seconds = workspace, folder, idle_seconds
        self.fingerprint = resident.fingerprint()
        self.memory = Memory(workspace)
        self.running = False
        self.stopping = False
        self._state = threading.Lock()

    def serve(self, listener: socket.socket) -> None:
        signal.signal(signal.SIGINT, self._on_interrupt)
        signal.signal(signal.SIGTERM, self._on_terminate)
        listener.settimeout(self.idle_seconds)
        while not self.stopping:
            try:
                conn, _address = listener.accept()
            except (TimeoutError, _Stop):
                return
            with conn:
                conn.settimeout(None)
                if _peer_uid(conn) == os.getuid():
                    self._handle(conn)

    def _on_interrupt(self, _signal: int, _frame: FrameType | None) -> None:
        if self.running:  # only a command is interrupted, never the server
            raise KeyboardInterrupt

    def _on_terminate(self, _signal: int, _frame: FrameType | None) -> None:
        self.stopping = True
        if self.running:
            raise KeyboardInterrupt
        raise _Stop

    def _handle(self, conn: socket.socket) -> None:
        frame = resident.receive(conn)
        if frame is None or frame[0] != resident.REQUEST:
            return
        request = marshal.loads(frame[1])  # (from a process of this user: see _peer_uid)
        if request.get("protocol") != resident.PROTOCOL or request.get("fingerprint") != self.fingerprint:
            self.stopping = True  # the client starts a server of its own mk once this one is gone
            resident.send(conn, resident.RESTART)
            return
        watcher = threading.Thread(target=self._watch_client, args=(conn,), daemon=True)
        with self._state:
            self.running = True
        watcher.start()
        try:
            status = self._run(conn, request)
        finally:
            with self._state:
                self.running = False
        with contextlib.suppress(OSError):
            resident.send(conn, resident.EXIT, str(status).encode())
        self.memory.settle(request["argv"][0] if request["argv"] else "")
        # The client closes on reading the status, which ends the watcher; it must not outlive its
        # command, or a late Ctrl-C of this client could interrupt the next client's.
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
        watcher.join(CLIENT_CLOSE_SECONDS)
        if watcher.is_alive():
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            watcher.join()

    def _watch_client(self, conn: socket.socket) -> None:
        """Ctrl-C in the client, or the client gone: interrupt the command."""
        while True:
            frame = resident.receive(conn)
            with self._state:
                if self.running:
                    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
                else:
                    return
            if frame is None:
                return

    def _run(self, conn: socket.socket, request: dict[str, Any]) -> int:
        """Run one command as mk.cli would in the client's process: its folder, environment,
        arguments and (framed) stdout and stderr."""
        saved_env, saved_streams = dict(os.environ), (sys.stdout, sys.stderr)
        lock = threading.Lock()
        tty_out, tty_err = request["tty"]
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(_ClientStream(conn, resident.STDOUT, tty_out, lock)),
                                      encoding="utf-8", errors="backslashreplace", line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.BufferedWriter(_ClientStream(conn, resident.STDERR, tty_err, lock)),
                                      encoding="utf-8", errors="backslashreplace", line_buffering=True)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["mk", *request["argv"]]
        status = 0
        try:
            os.chdir(request["cwd"])
            with self.memory.serving(request["argv"][0] if request["argv"] else ""):
                cli.run_command()
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except KeyboardInterrupt:  # after mk.cli's own handling (say, while it printed)
            status = cli.EXIT_INTERRUPTED
        except BaseException:  # a bug: the client sees it, and the server keeps nothing it built
            traceback.print_exc()
            self.memory.forget()
            status = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            sys.stdout, sys.stderr = saved_streams
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(self.folder)
        return status


def _peer_uid(conn: socket.socket) -> int:
    """The user of the client: only the server's own may run commands with it."""
    credentials = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", credentials)[1])


def _idle_seconds(workspace: Path) -> float:
    if env := os.environ.get("MK_SERVER_IDLE_SECONDS", "").strip():
        return float(env)
    try:
        return float(find_workspace(workspace, cli.REGISTRY.all_settings()).settings.server_idle_seconds)
    except MkError:
        return float(Settings.server_idle_seconds)  # the first command reports the bad mk.toml


def main(argv: list[str]) -> None:
    workspace, folder = Path(argv[1]), argv[2]
    os.makedirs(folder, mode=0o700, exist_ok=True)
    lock = os.open(os.path.join(folder, resident.LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # a server already runs here
    os.chdir(folder)  # the socket is bound by its short relative name (see resident.short_path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(resident.SOCKET)  # a killed server's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(resident.SOCKET)
    listener.listen(16)
    Path(resident.PID).write_text(str(os.getpid()), encoding="ascii")
    server = Server(workspace, folder, _idle_seconds(workspace))
    try:
        server.serve(listener)
    finally:
        server.memory.close()
        # Gone first, so that a client connecting now starts a new server instead of waiting.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, resident.SOCKET))
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, resident.PID))
        os.close(lock)


if __name__ == "__main__":
    main(sys.argv)
