#!/usr/bin/env python3
"""Where a TCG boot of //examples:sshd spends its time, from QEMU's start to sshd's banner on the
published port: the reboot of `mk watch --run`. The image is built first (`mk image`, with the
usual cache); then QEMU runs with the command line `mk run --accel tcg` gives it (the initrd
decompressed by the host, a CPU with RDRAND), and, alternating with it, that command line with one
of those levers taken away, so load on the machine hits each alike.

Each console line is stamped with the host's clock on arrival; the phases shown are the first line
matching each mark (a mark missing from the console shows as -).

Needs QEMU and ssh-keygen (and the Debian mirror once, for the packages).
Usage: python3 bench/boot.py [--runs N] [--verbose]
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from debs import mk_exe, run

from mk.rules import qemu as vm
from mk.rules.providers import Boot

REPO = Path(__file__).resolve().parent.parent
TARGET = "//examples:sshd"
MARKS = {  # phase: the start of the console line that ends it
    "kernel starts": "[    0.000000] Linux version",
    "initramfs unpacked": "Freeing initrd memory",
    "/init runs": "Run /init as init process",
    "random pool ready": "random: crng init done",
    "sshd listening": "[sshd_service] Server listening",
}
BOOT_SECONDS = 300


def variants(command: list[str], compressed_initrd: Path) -> dict[str, list[str]]:
    """mk's command line, and the same with one of its levers taken away."""
    cpu = command.index("-cpu")
    initrd = command.index("-initrd") + 1
    zstd = [*command[:initrd], str(compressed_initrd), *command[initrd + 1:]]
    return {"mk run": command, "zstd initrd": zstd, "without RDRAND": command[:cpu] + command[cpu + 2:]}


def _pump(stream: IO[bytes], lines: queue.Queue[tuple[float, str]]) -> None:
    for raw in stream:
        lines.put((time.perf_counter(), raw.decode(errors="replace")))


def banner_seconds(port: int, started: float) -> float | None:
    """Seconds from `started` to sshd's banner on `port`, polled every 50 ms."""
    while time.perf_counter() - started < BOOT_SECONDS:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(1)
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.05)
    return None


def boot(command: list[str], port: int, verbose: bool) -> dict[str, float]:
    started = time.perf_counter()
    qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue[tuple[float, str]] = queue.Queue()
    assert qemu.stdout is not None
    threading.Thread(target=_pump, args=(qemu.stdout, lines), daemon=True).start()
    try:
        answered = banner_seconds(port, started)
    finally:
        qemu.kill()
        qemu.wait()
    phases: dict[str, float] = {}
    while not lines.empty():
        when, line = lines.get()
        if verbose:
            print(f"{when - started:7.2f} {line.rstrip()[:150]}")
        for phase, mark in MARKS.items():
            if phase not in phases and mark in line:
                phases[phase] = when - started
    if answered is not None:
        phases["ssh banner"] = answered
    if "/init runs" in phases and "sshd listening" in phases:
        phases["/init to sshd"] = phases["sshd listening"] - phases["/init runs"]
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="boots per variant; the median is shown")
    parser.add_argument("--verbose", action="store_true", help="print every console line with its time")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run([mk_exe(), "image", TARGET], REPO, env)
    out = REPO / "mk-out/examples/sshd"
    files = {"kernel": out / "kernel", "initrd": out / "initrd.img", "cmdline": out / "cmdline"}
    work = Path(tempfile.mkdtemp(prefix="mk-bench-boot-"))
    try:
        subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(work / "key")], check=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        options = vm.VmOptions(publish=((port, 22),), ssh_key=(work / "key.pub").read_text().strip())
        # As `mk run` does under TCG: the host decompresses the initrd.
        unpacked = {**files, "initrd": vm.uncompressed_initrd(files["initrd"], work)}
        commands = variants(vm.command(Boot("direct", "kernel", {}), unpacked, options, "tcg"), files["initrd"])
        results: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                results[name].append(boot(command, port, args.verbose))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    phases = [*MARKS, "ssh banner", "/init to sshd"]
    print(f"{TARGET} under TCG, seconds from QEMU's start; median of {args.runs} boots; load {os.getloadavg()[0]:.1f}")
    print(f"{'phase':20}" + "".join(f"{name:>16}" for name in results))
    for phase in phases:
        cells = []
        for runs in results.values():
            times = [r[phase] for r in runs if phase in r]
            cells.append(f"{statistics.median(times):15.2f}s" if len(times) == len(runs) else f"{'-':>16}")
        print(f"{phase:20}" + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
