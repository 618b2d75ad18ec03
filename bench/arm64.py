#!/usr/bin/env python3
"""//examples:sshd for linux/arm64 beside linux/amd64: a cold build (every .deb already in the
content store), an incremental build after editing sshd_config, and the actions an arm64 build
shares with the amd64 one; then the arm64 image booted under TCG (qemu-system-aarch64 -M virt)
until sshd answers, beside the amd64 image booted the same way (TCG too, for a like-for-like figure).

Needs the Debian mirror once (to fill the store), and QEMU for the boots (skipped without it).
Usage: python3 bench/arm64.py [--runs N] [--no-boot] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from debs import examples_copy, mk_exe, run

TARGET = "//examples:sshd"
PLATFORMS = {"amd64": "linux/amd64", "arm64": "linux/arm64"}
QEMU = {"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
BOOT_SECONDS = 600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is shown")
    parser.add_argument("--no-boot", action="store_true", help="measure builds only")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mk-bench-arm64-"))
    try:
        return bench(work, args.runs, not args.no_boot)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, runs: int, boot: bool) -> int:
    ws, cache, env = examples_copy(work)
    print("filling the content store (network)...", file=sys.stderr)
    for platform in PLATFORMS.values():
        run([mk_exe(), "image", TARGET, "--platform", platform], ws, env)

    def image(platform: str, events: Path | None = None) -> float:
        extra = ["--json-events", str(events)] if events else []
        return run([mk_exe(), "image", TARGET, "--platform", platform, *extra], ws, env)

    def cold(platform: str) -> float:
        for folder in (cache / "ac", cache / "graphs", ws / "mk-out"):
            shutil.rmtree(folder, ignore_errors=True)
        return image(platform)

    config = ws / "examples" / "sshd_config"
    original = config.read_text()
    edits = iter(range(10**6))

    def incremental(platform: str) -> float:
        config.write_text(original + f"# edit {next(edits)}\n")
        return image(platform)

    rows = []
    for arch, platform in PLATFORMS.items():
        rows.append((f"{arch} cold (debs in the store)", [cold(platform) for _ in range(runs)]))
        rows.append((f"{arch} incremental (sshd_config edited)", [incremental(platform) for _ in range(runs)]))
    shared, total = _shared_actions(work, image)
    boots = [(f"{arch} boot to sshd's banner (TCG)", [_boot(ws, env, arch, work)]) for arch in PLATFORMS
             if boot and shutil.which(QEMU[arch])]
    print(f"{TARGET}; median of {runs} runs (boots: one each); {os.cpu_count()} CPUs; load {_load()}")
    print(f"{'case':44} {'median':>9} {'min':>9}")
    for name, times in rows + boots:
        print(f"{name:44} {statistics.median(times) * 1000:7.0f}ms {min(times) * 1000:7.0f}ms")
    cold_ratio = statistics.median(rows[2][1]) / statistics.median(rows[0][1])
    print(f"arm64 cold build / amd64 cold build: {cold_ratio:.2f}")
    print(f"actions of the arm64 build cached after an amd64 build from an empty action cache: {shared} of {total}")
    if len(boots) == 2:
        print(f"arm64 TCG boot / amd64 TCG boot: {statistics.median(boots[1][1]) / statistics.median(boots[0][1]):.2f}")
    return 0


def _shared_actions(work: Path, image: Callable[[str, Path | None], float]) -> tuple[int, int]:
    """After emptying the action cache, build amd64 then arm64: the arm64 actions found cached are
    those the two platforms share."""
    cache = work / "cache"
    for folder in (cache / "ac", cache / "graphs"):
        shutil.rmtree(folder, ignore_errors=True)
    image(PLATFORMS["amd64"], None)
    events = work / "arm64-events.jsonl"
    image(PLATFORMS["arm64"], events)
    found = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    return sum(e["status"] == "cached" for e in found), len(found)


def _boot(ws: Path, env: dict[str, str], arch: str, work: Path) -> float:
    """Seconds from `mk run` (image already built) to sshd's banner on the published port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / f"boot-{arch}.log", "w")  # noqa: SIM115 - closed below, after the VM
    started = time.perf_counter()
    vm = subprocess.Popen([mk_exe(), "run", TARGET, "--platform", PLATFORMS[arch], "--accel", "tcg", "--publish",
                           f"{port}:22"], cwd=ws, env=env, stdin=subprocess.DEVNULL, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while time.perf_counter() - started < BOOT_SECONDS:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                    if conn.recv(8).startswith(b"SSH-"):
                        return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.5)
        sys.exit(f"{arch}: sshd did not answer within {BOOT_SECONDS} s; see {work / f'boot-{arch}.log'}")
    finally:
        os.killpg(vm.pid, 15)
        vm.wait(timeout=60)
        log.close()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
