#!/usr/bin/env python3
"""Debian benchmark: the locked sshd package set turned into one merged tree.

mk runs from a warm content store (every .deb already stored) with a cold action cache, so every
package is unpacked again; peers unpack the same .deb files in the same run:
  - dpkg-deb -x of each package into one folder, one after the other;
  - mmdebstrap --variant=extract from a local copy:// repository of those .debs, to a tarball.

Needs the Debian mirror once (for `mk lock` and the first fetch) and, for the peers, dpkg-deb
and mmdebstrap. Usage: python3 bench/debs.py [--runs N] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ["openssh-server", "busybox-static"]
BUILD = f'deb_packages(name = "sshd", packages = {json.dumps(PACKAGES)})\n'


def mk_exe() -> str:
    return str(REPO / ".venv" / "bin" / "mk")


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is shown")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mk-bench-debian-"))
    try:
        return bench(work, args.runs)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, runs: int) -> int:
    ws, cache = work / "ws", work / "cache"
    (ws / "os").mkdir(parents=True)
    (ws / "mk.toml").write_text("")
    (ws / "os" / "BUILD").write_text(BUILD)
    env = {k: v for k, v in os.environ.items() if k not in ("MK_CACHE_DIR", "PYTHONDONTWRITEBYTECODE")}
    env["MK_CACHE_DIR"] = str(cache)
    print(f"locking and fetching {', '.join(PACKAGES)} (network)...", file=sys.stderr)
    run([mk_exe(), "lock", "//os:sshd"], ws, env)
    run([mk_exe(), "build", "//os:sshd"], ws, env)
    lock = json.loads((ws / "os" / "sshd.lock.json").read_text())
    debs = export_debs(cache, lock, work / "repo")
    size = sum(p.stat().st_size for p in debs)

    def mk_cold_ac() -> float:
        shutil.rmtree(cache / "ac", ignore_errors=True)
        shutil.rmtree(ws / "mk-out", ignore_errors=True)
        return run([mk_exe(), "build", "//os:sshd"], ws, env)

    def dpkg_deb() -> float:
        target = work / "dpkg-root"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        started = time.perf_counter()
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
        return time.perf_counter() - started

    def mmdebstrap() -> float:
        out = work / "mmdebstrap.tar"
        out.unlink(missing_ok=True)
        names = ",".join(p["name"] for p in lock["packages"])
        return run(["mmdebstrap", "--quiet", "--variant=extract", "--mode=root", f"--include={names}", "bookworm",
                    str(out), f"deb [trusted=yes] copy://{work / 'repo'} ./"], work, env)

    rows = [("mk build (warm CAS, cold action cache)", [mk_cold_ac() for _ in range(runs)])]
    if shutil.which("dpkg-deb"):
        rows.append(("dpkg-deb -x, each package", [dpkg_deb() for _ in range(runs)]))
    if shutil.which("mmdebstrap"):
        rows.append(("mmdebstrap --variant=extract", [mmdebstrap() for _ in range(runs)]))
    mk_time = statistics.median(rows[0][1])
    print(f"{len(debs)} packages, {size / 2**20:.1f} MiB of .debs; median of {runs} runs; {os.cpu_count()} CPUs")
    print(f"{'case':42} {'median':>8} {'min':>8}  mk faster by")
    for name, times in rows:
        ratio = statistics.median(times) / mk_time
        print(f"{name:42} {statistics.median(times):7.2f}s {min(times):7.2f}s  {ratio:5.2f}x")
    return 0


def export_debs(cache: Path, lock: dict[str, list[dict[str, str]]], repo: Path, only_these: bool = False) -> list[Path]:
    """The locked .debs out of mk's store, plus a Packages index so mmdebstrap can use them.

    With `only_these`, the index drops dependency fields, so apt takes exactly this set even
    where the lockfile excluded a dependency (as mk's examples exclude maintainer-script tools)."""
    sys.path.insert(0, str(REPO))
    from mk.cache.cas import ContentStore
    from mk.rules.deb import known_debs

    repo.mkdir()
    cas = ContentStore(cache)
    debs, paragraphs = [], []
    for package in lock["packages"]:
        deb = repo / Path(package["path"]).name
        if not known_debs.copy(cas, package["sha256"], deb):
            sys.exit(f"{package['name']} is not in mk's store")
        control = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
        if only_these:
            dependency = ("Depends:", "Pre-Depends:", "Recommends:", "Suggests:", "Breaks:", "Conflicts:")
            control = "".join(line + "\n" for line in control.splitlines() if not line.startswith(dependency))
        data = deb.read_bytes()
        paragraphs.append(control.rstrip("\n") + f"\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                          f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
        debs.append(deb)
    (repo / "Packages").write_text("\n".join(paragraphs))
    return debs


if __name__ == "__main__":
    sys.exit(main())
