#!/usr/bin/env python3
"""//examples:sshd: a cold build with every .deb already in the content store, a no-op build and
an incremental build after editing one file that goes into the image, against mmdebstrap
(--variant=extract, from a local copy:// repository of the same .debs) plus GNU cpio and zstd.

Needs the Debian mirror once (to fill the store), mmdebstrap, cpio and zstd.
Usage: python3 bench/image.py [--runs N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from debs import examples_copy, export_debs, mk_exe, run

TARGET = "//examples:sshd"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement; the median is shown")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mk-bench-image-"))
    try:
        return bench(work, args.runs)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, runs: int) -> int:
    ws, cache, env = examples_copy(work)
    print("filling the content store (network)...", file=sys.stderr)
    run([mk_exe(), "image", TARGET], ws, env)

    def cold() -> float:
        for folder in (cache / "ac", cache / "graphs", ws / "mk-out"):
            shutil.rmtree(folder, ignore_errors=True)
        return run([mk_exe(), "image", TARGET], ws, env)

    def noop() -> float:
        return run([mk_exe(), "image", TARGET], ws, env)

    config = ws / "examples" / "sshd_config"
    original = config.read_text()
    edits = iter(range(10**6))

    def incremental() -> float:
        config.write_text(original + f"# edit {next(edits)}\n")
        return run([mk_exe(), "image", TARGET], ws, env)

    rows = [("mk cold (debs in the store)", [cold() for _ in range(runs)])]
    noop()
    rows.append(("mk no-op", [noop() for _ in range(runs)]))
    rows.append(("mk incremental (sshd_config edited)", [incremental() for _ in range(runs)]))
    if shutil.which("mmdebstrap") and shutil.which("cpio"):
        lock = json.loads((ws / "examples" / "sshd_packages.lock.json").read_text())
        kernel_lock = json.loads((ws / "examples" / "kernel_packages.lock.json").read_text())
        lock["packages"] += kernel_lock["packages"]
        export_debs(cache, lock, work / "repo", only_these=True)
        rows.append(("mmdebstrap --variant=extract + cpio + zstd", [peer(work, lock, env) for _ in range(runs)]))
    print(f"{TARGET}; median of {runs} runs; {os.cpu_count()} CPUs")
    print(f"{'case':44} {'median':>9} {'min':>9}")
    for name, times in rows:
        print(f"{name:44} {statistics.median(times) * 1000:7.0f}ms {min(times) * 1000:7.0f}ms")
    peer_row = [times for name, times in rows if name.startswith("mmdebstrap")]
    if peer_row:
        ratio = statistics.median(peer_row[0]) / statistics.median(rows[0][1])
        print(f"mk cold build is {ratio:.2f}x faster than mmdebstrap + cpio")
    return 0


def peer(work: Path, lock: dict[str, list[dict[str, str]]], env: dict[str, str]) -> float:
    """The same package set unpacked by mmdebstrap into a folder, then packed as a zstd cpio."""
    root, initrd = work / "mmdebstrap-root", work / "mmdebstrap.cpio.zst"
    shutil.rmtree(root, ignore_errors=True)
    names = ",".join(p["name"] for p in lock["packages"])
    started = time.perf_counter()
    run(["mmdebstrap", "--quiet", "--variant=extract", "--mode=root", f"--include={names}", "bookworm", str(root),
         f"deb [trusted=yes] copy://{work / 'repo'} ./"], work, env)
    with open(initrd, "wb") as out:
        find = subprocess.Popen(["find", ".", "-print0"], cwd=root, stdout=subprocess.PIPE)
        cpio = subprocess.Popen(["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=root, stdin=find.stdout,
                                stdout=subprocess.PIPE)
        zstd = subprocess.Popen(["zstd", "-q", "-T0", "-3"], stdin=cpio.stdout, stdout=out)
        for proc in (zstd, cpio, find):
            proc.wait()
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
