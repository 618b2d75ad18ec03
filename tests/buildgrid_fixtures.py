"""A real BuildGrid server (scripts/buildgrid.py) and real `mk worker` processes, for the tests.

Without BuildGrid installed (scripts/setup-buildgrid.sh) the tests that need it are skipped,
except in CI (CI set), where they fail: setup should have installed it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MK, mk_env

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import buildgrid
from buildgrid import BuildGrid, free_port

__all__ = ["BuildGrid", "free_port"]  # for the tests, which import them from here

# Seconds after which a silent bot's leases go to another bot: short, so that the test that kills
# a worker does not wait long.
KEEPALIVE_SECONDS = 8


@contextlib.contextmanager
def buildgrid_server(instance: str = "") -> Iterator[BuildGrid]:
    try:
        buildgrid.check_installed()
    except buildgrid.BuildGridUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    with buildgrid.running(instance=instance, keepalive_seconds=KEEPALIVE_SECONDS) as grid:
        yield grid


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log: Path
    cache: Path

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if "serving" in self.text():
                return
            if self.process.poll() is not None:
                pytest.fail(f"mk worker exited ({self.process.returncode}):\n{self.text()}")
            time.sleep(0.1)
        pytest.fail(f"mk worker did not start within {seconds:.0f} s:\n{self.text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_worker(url: str, folder: Path, name: str, capacity: int = 2, instance: str = "",
                 env: dict[str, str] | None = None, prefetch: int = 0) -> WorkerProcess:
    cache = folder / f"{name}-cache"
    cache.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([MK, "worker", "--remote", url, "--instance", instance, "--capacity",
                                    str(capacity), "--prefetch", str(prefetch)],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env=mk_env(cache, env), start_new_session=True)
    return WorkerProcess(process, log, cache)


@contextlib.contextmanager
def workers(url: str, folder: Path, count: int, capacity: int = 2) -> Iterator[list[WorkerProcess]]:
    started = [start_worker(url, folder, f"worker{i}", capacity) for i in range(count)]
    try:
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.stop()
