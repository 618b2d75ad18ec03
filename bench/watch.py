"""Edit-to-rebuilt latency of `mk watch //examples:sshd` for a one-line sshd_config change.

A copy of the workspace (mk.toml and examples/) is made in a temporary folder; the cache is
the usual one (MK_CACHE_DIR), so only what the edit touches is rebuilt. Each of --edits edits
appends a new comment line to sshd_config (bytes never seen before) and times from the write to
the "mk watch: done" line. The VM boot is not included.
"""

from __future__ import annotations

import argparse
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
MK = str(Path(sys.executable).parent / "mk")


def _pump(stream: IO[str], lines: queue.Queue[tuple[float, str]]) -> None:
    for line in stream:
        lines.put((time.perf_counter(), line.rstrip("\n")))


def _until(lines: queue.Queue[tuple[float, str]], prefix: str, timeout: float) -> tuple[float, list[str]]:
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        when, line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        seen.append(line)
        if line.startswith(prefix):
            return when, seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--target", default="//examples:sshd")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mk-watch-bench-") as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "mk.toml", root / "mk.toml")
        shutil.copytree(REPO / "examples", root / "examples")
        config = root / "examples" / "sshd_config"
        original = config.read_text(encoding="utf-8")
        proc = subprocess.Popen([MK, "watch", args.target], cwd=root, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        lines: queue.Queue[tuple[float, str]] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        try:
            _until(lines, "mk watch: watching", 600)
            latencies, executed = [], []
            for i in range(args.edits):
                time.sleep(0.3)
                started = time.perf_counter()
                config.write_text(original + f"# bench edit {i} {time.time_ns()}\n", encoding="utf-8")
                done, seen = _until(lines, "mk watch: done", 120)
                _until(lines, "mk watch: watching", 120)
                latencies.append(done - started)
                executed.append(next((s for s in seen if s.startswith("mk: ")), "?"))
            latencies.sort()
            print(f"{args.target}: {args.edits} edits of examples/sshd_config")
            print(f"  last rebuild: {executed[-1]}")
            print(f"  edit -> rebuilt: median {statistics.median(latencies) * 1000:.0f} ms, "
                  f"min {latencies[0] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
