"""Edit-to-rebuilt latency of `mk watch //examples:sshd` for a one-line sshd_config change.

A copy of the workspace (mk.toml and examples/) is made in a temporary folder; the cache is
the usual one (MK_CACHE_DIR), so only what the edit touches is rebuilt. Each of --edits edits
appends a new comment line to sshd_config (bytes never seen before) and times from the write to
the "mk watch: done" line. The VM boot is not included.

With --run, `mk watch --run --accel tcg` boots the image, and each edit is timed to sshd's banner
answering again and to an ssh login that reads the edited line back: edits of sshd_config, which
soft-reboot the VM, alternate with edits of the image's kernel command line (a word added or taken
away), which reboot it in full, in the same run.
"""

from __future__ import annotations

import argparse
import os
import queue
import selectors
import shutil
import signal
import socket
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _banner(port: int, timeout: float) -> float:
    """When sshd first answered on `port`. Up to three connections are open at once, a new one
    every 100 ms while fewer are: QEMU's user networking accepts at once and holds a connection
    while the guest's SYNs go unanswered (while its DHCP client has taken the address away), so
    one connection at a time measured that connection's wait. (More would load sshd, which
    re-executes itself for each, under TCG.)"""
    deadline = time.monotonic() + timeout
    pending: list[socket.socket] = []
    opened = 0.0
    try:
        with selectors.DefaultSelector() as selector:
            while time.monotonic() < deadline:
                if len(pending) < 3 and time.monotonic() - opened >= 0.1:
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", port))
                    pending.append(s)
                    selector.register(s, selectors.EVENT_READ)
                    opened = time.monotonic()
                for key, _ in selector.select(timeout=0.02):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(64)
                    except OSError:
                        data = b""
                    if data.startswith(b"SSH-2.0-"):
                        return time.perf_counter()
                    selector.unregister(sock)
                    sock.close()
                    pending.remove(sock)
    finally:
        for sock in pending:
            sock.close()
    raise SystemExit(f"sshd did not answer on port {port} within {timeout:.0f} s")


def _login(port: int, key: Path, wanted: str) -> float:
    """When an ssh login first read `wanted` as sshd_config's last line."""
    for _ in range(20):
        result = subprocess.run(["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
                                 "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                                 "root@127.0.0.1", "tail -n 1 /etc/ssh/sshd_config"], capture_output=True, text=True)
        if result.stdout.strip() == wanted:
            return time.perf_counter()
        time.sleep(0.1)
    raise SystemExit(f"ssh never read {wanted!r} back: {result.stdout!r} {result.stderr!r}")


def _row(name: str, seconds: list[float]) -> str:
    return (f"  {name:<28} median {statistics.median(seconds):5.2f} s, min {min(seconds):5.2f} s, "
            f"max {max(seconds):5.2f} s")


def run(args: argparse.Namespace, root: Path) -> None:
    """--run: save -> sshd answering again, soft reboot against full reboot."""
    key = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(key)], check=True)
    config, build = root / "examples" / "sshd_config", root / "examples" / "BUILD"
    original, rules = config.read_text(encoding="utf-8"), build.read_text(encoding="utf-8")
    assert args.target == "//examples:sshd", "--run edits //examples:sshd's BUILD"
    port = _free_port()
    proc = subprocess.Popen([MK, "watch", args.target, "--run", "--accel", "tcg", "--publish", f"{port}:22",
                             "--ssh-key", f"{key}.pub"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
    lines: queue.Queue[tuple[float, str]] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    timings: dict[str, list[float]] = {name: [] for name in
                                       ("soft: save -> rebuilt", "soft: save -> banner", "soft: save -> ssh reads it",
                                        "full: save -> rebuilt", "full: save -> banner", "full: save -> ssh reads it")}
    try:
        _until(lines, "mk watch: starting the image", 600)
        _banner(port, 600)
        for i in range(args.edits):
            for kind in ("soft", "full"):
                time.sleep(1.0)
                last = f"# bench edit {kind} {i} {time.time_ns()}"
                started = time.perf_counter()
                config.write_text(original + last + "\n", encoding="utf-8")
                if kind == "full":  # and a word on the kernel's command line, or none: the kernel changes
                    word = f'    cmdline = "console=ttyS0 panic=-1 mk.bench={i}",\n' if i % 2 == 0 else ""
                    build.write_text(rules.replace('    kernel = ":kernel",\n    # The disk formats',
                                                   f'    kernel = ":kernel",\n{word}    # The disk formats', 1),
                                     encoding="utf-8")
                rebuilt, _ = _until(lines, "mk watch: done", 120)
                restarted = "mk watch: soft reboot done" if kind == "soft" else "mk watch: starting the image"
                _, seen = _until(lines, restarted, 120)
                assert not any(line.startswith("mk watch: a full reboot") for line in seen) or kind == "full", seen
                answered = _banner(port, 120)
                read = _login(port, key, last)
                timings[f"{kind}: save -> rebuilt"].append(rebuilt - started)
                timings[f"{kind}: save -> banner"].append(answered - started)
                timings[f"{kind}: save -> ssh reads it"].append(read - started)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    print(f"{args.target} under TCG, {args.edits} edits each, sshd_config (soft reboot) and the kernel command "
          "line (full reboot), alternating")
    for name, seconds in timings.items():
        print(_row(name, seconds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--target", default="//examples:sshd")
    parser.add_argument("--run", action="store_true", help="boot the image and time each edit to ssh answering again")
    args = parser.parse_args()
    if args.run:
        with tempfile.TemporaryDirectory(prefix="mk-watch-bench-") as tmp:
            shutil.copy(REPO / "mk.toml", Path(tmp) / "mk.toml")
            shutil.copytree(REPO / "examples", Path(tmp) / "examples")
            run(args, Path(tmp))
        return 0
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
