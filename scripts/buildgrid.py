#!/usr/bin/env python3
"""A BuildGrid server on 127.0.0.1 for mk's remote execution, with the PostgreSQL its scheduler needs.

    scripts/setup-buildgrid.sh            # once: BuildGrid in its own venv, .venv-buildgrid
    .venv/bin/python scripts/buildgrid.py # prints the server's grpc:// URL; Ctrl-C stops it all

Everything lives in a fresh temporary folder: a PostgreSQL cluster made with initdb and run with
pg_ctl (as the `postgres` user when this runs as root, since PostgreSQL refuses root), BuildGrid's
tables made by `bgd migrate apply`, a disk CAS, and `bgd server start` on free ports. The tests'
fixtures (tests/buildgrid_fixtures.py) and `.ci/run` start and stop it through `BuildGrid`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-buildgrid"
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
START_SECONDS = 60

_CONFIG = """\
server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true

# Every Execute stream and every bot's long poll holds a gRPC thread for as long as it lasts.
thread-pool-size: 300

connections:
  - !sql-connection &sql
    connection-string: postgresql+psycopg2://bgd@127.0.0.1:{pg_port}/bgd
    pool-size: 20
    pool-timeout: 30
    max-overflow: 20

storages:
  - !disk-storage &main-storage
    path: {cas}

caches:
  - !lru-action-cache &main-action
    storage: *main-storage
    max-cached-refs: 100000
    allow-updates: {allow_updates}

schedulers:
  - !sql-scheduler &state-database
    sql: *sql
    action-cache: *main-action
    storage: *main-storage
    # A bot that has not called back within this many seconds is gone: its leases are queued again.
    bot-session-keepalive-timeout: {keepalive}
    session-expiry-timer-interval: 2
    poll-interval: 0.1
    bot-poll-interval: 0.1
    # Queued jobs reach waiting bots when an assigner next looks (by default every 1 to 2 s, plus
    # up to jitter-factor s): that is the least time any remote action takes, so it looks every
    # 10 to 11 ms. (Every 20 to 30 ms cost each action of a chain about 15 ms more; every 5 ms
    # gained nothing on that and slowed 64 actions on 8 bots by about 3 %. Idle, BuildGrid and
    # PostgreSQL then use 13 % of a core, against 7 %.) A bot reporting a finished lease takes the
    # next queued job itself, so the assigner matters for the first jobs and for jobs queued while
    # bots wait.
    assigners:
      - !priority-age-assigner
        interval: 0.01
        jitter-factor: 0.001
        # Each job to the bot with the most free capacity (of all, up to 64, not the first found):
        # an idle bot before one that holds a lease it has not started (`mk worker --prefetch`).
        bot-assignment-strategy: !assign-by-capacity
          sampling: !sampling-config
            sample-size: 64

instances:
  - name: '{instance}'
    services:
      - !action-cache
        cache: *main-action
      - !execution
        scheduler: *state-database
      - !cas
        storage: *main-storage
      - !bytestream
        storage: *main-storage
      - !bots
        scheduler: *state-database
"""


class BuildGridUnavailable(Exception):
    """BuildGrid or PostgreSQL is not installed here; says what to run."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_postgres(argv: Sequence[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, commands run as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)


def check_installed(venv: Path = VENV) -> Path:
    """The `bgd` program; BuildGridUnavailable says what is missing."""
    bgd = venv / "bin" / "bgd"
    if not bgd.is_file():
        raise BuildGridUnavailable(f"BuildGrid is not installed in {venv}: run scripts/setup-buildgrid.sh")
    if not (POSTGRES_BIN / "initdb").is_file():
        raise BuildGridUnavailable(f"PostgreSQL 15 is not installed ({POSTGRES_BIN}): run scripts/setup.sh "
                                   "(Debian: apt-get install postgresql)")
    return bgd


@dataclass
class BuildGrid:
    """A running PostgreSQL and BuildGrid server; `stop` (or the context manager) ends both."""

    folder: Path
    bgd: Path
    port: int = field(default_factory=free_port)
    pg_port: int = field(default_factory=free_port)
    instance: str = ""
    keepalive_seconds: int = 30
    allow_updates: bool = True  # clients may write to the action cache (False: a read-only cache)
    server: subprocess.Popen[bytes] | None = None
    postgres_started: bool = False

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / "bgd.log"

    def start(self) -> None:
        data = self.folder / "pg"
        self._postgres("initdb", "-D", str(data), "-A", "trust", "-U", "bgd", "--no-sync")
        self._postgres("pg_ctl", "-D", str(data), "-w", "-l", str(self.folder / "pg.log"), "-o",
                       f"-p {self.pg_port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        self.postgres_started = True
        self._postgres("psql", "-q", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "bgd", "-d", "postgres",
                       "-c", "create database bgd;", program=Path("/usr/bin/psql"))
        database = f"postgresql+psycopg2://bgd@127.0.0.1:{self.pg_port}/bgd"  # BuildGrid's notifier needs psycopg2
        _run([str(self.bgd), "migrate", "apply", database], self.folder)
        self.configure()
        self.start_server()

    def configure(self) -> None:
        """Write the server's configuration from the fields; a server started after reads it."""
        (self.folder / "buildgrid.yml").write_text(_CONFIG.format(
            port=self.port, pg_port=self.pg_port, cas=self.folder / "cas", keepalive=self.keepalive_seconds,
            instance=self.instance, allow_updates="true" if self.allow_updates else "false"), encoding="utf-8")

    def start_server(self) -> None:
        """`bgd server start`, until the port answers (also after `stop_server`: a server restart)."""
        with open(self.log, "ab") as log:
            self.server = subprocess.Popen([str(self.bgd), "server", "start", str(self.folder / "buildgrid.yml")],
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"bgd server exited ({self.server.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.1)
        raise RuntimeError(f"bgd server did not listen on {self.port} within {START_SECONDS} s:\n{self.log_tail()}")

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()
        self.server = None

    def stop(self) -> None:
        try:
            self.stop_server()
        finally:
            if self.postgres_started:
                self._postgres("pg_ctl", "-D", str(self.folder / "pg"), "-m", "immediate", "-w", "stop")
                self.postgres_started = False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _postgres(self, tool: str, *args: str, program: Path | None = None) -> None:
        _run(_as_postgres([str(program or POSTGRES_BIN / tool), *args]), self.folder)


def _run(argv: Sequence[str], cwd: Path) -> None:
    done = subprocess.run(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    if done.returncode != 0:
        said = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{said}")


@contextlib.contextmanager
def running(instance: str = "", keepalive_seconds: int = 30, venv: Path = VENV) -> Iterator[BuildGrid]:
    """A BuildGrid server in a fresh temporary folder, removed with everything in it afterwards."""
    bgd = check_installed(venv)
    folder = Path(tempfile.mkdtemp(prefix="mk-buildgrid-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")  # its cluster lives here; BuildGrid runs as root beside it
        grid = BuildGrid(folder, bgd, instance=instance, keepalive_seconds=keepalive_seconds)
        try:
            grid.start()
            yield grid
        finally:
            grid.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    try:
        with running() as grid:
            print(f"buildgrid: {grid.url} (instance ''; logs in {grid.log}); Ctrl-C stops it", flush=True)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            with contextlib.suppress(KeyboardInterrupt):
                while grid.server is not None and grid.server.poll() is None:
                    time.sleep(0.5)
    except BuildGridUnavailable as e:
        sys.exit(f"buildgrid: {e}")


if __name__ == "__main__":
    main()
