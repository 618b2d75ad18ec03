#!/usr/bin/env python3
"""Debian benchmark: the locked sshd package set (examples/sshd_packages.lock.json) into one tree.

mk runs from a warm content store (every .deb already stored) with a cold action cache, so every
package is unpacked again: through the workspace's build server, as `mk build` runs by default (a
server started afresh before each build, which has not built the target yet, so it remembers
nothing of it), and with --no-server in a process of its own, as CI runs it. In the same run it is
held against:
  - the xz limit: `dpkg-deb --fsys-tarfile` of each package to /dev/null (C liblzma, nothing
    written), the packages spread over every core, largest first: the least any unpacker of
    these .debs can take here;
  - dpkg-deb -x of each package into one folder, one after the other;
  - mmdebstrap --variant=extract from a local copy:// repository of those .debs, to a tarball.

Needs the Debian mirror once (for the first fetch) and, for the peers, dpkg-deb and mmdebstrap.
`CPU s` counts every process of a case: for the server row the client's, and the server's and
its children's from /proc (they are no children of this script); for the others the children's.

Usage: python3 bench/debs.py [--runs N] [--keep]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "examples" / "sshd_packages.lock.json"
TARGET = "//os:sshd_packages"
LIMIT_CASE = "xz limit: dpkg-deb --fsys-tarfile, all cores"
SERVER_CASE = "mk build (warm CAS, cold action cache)"
NO_SERVER_CASE = "mk build --no-server"
TARGET_RATIO = 1.5  # mk at most this many times the xz limit


def build_file() -> str:
    """The examples' sshd_packages rule, so that their lockfile (whose digest covers the rule's
    attributes) is used as it is."""
    text = (REPO / "examples" / "BUILD").read_text()
    start = text.index("MAINTAINER_SCRIPT_DEPENDENCIES = [")
    constant = text[start:text.index("]\n", start) + 2]
    start = text.index("deb_packages(\n    name = \"sshd_packages\"")
    return constant + "\n" + text[start:text.index("\n)\n", start) + 3]


def mk_exe() -> str:
    return str(REPO / ".venv" / "bin" / "mk")


def examples_copy(work: Path) -> tuple[Path, Path, dict[str, str]]:
    """A copy of the examples workspace in `work`, a cache of its own, and the environment naming it:
    (workspace, cache, environment)."""
    ws, cache = work / "ws", work / "cache"
    ws.mkdir()
    shutil.copy(REPO / "mk.toml", ws / "mk.toml")
    shutil.copytree(REPO / "examples", ws / "examples", ignore=shutil.ignore_patterns("mk-out"))
    env = {k: v for k, v in os.environ.items() if k not in ("MK_CACHE_DIR", "PYTHONDONTWRITEBYTECODE")}
    env["MK_CACHE_DIR"] = str(cache)
    env["MK_SERVER"] = "0"  # each build in a process of its own: the benchmarks change the cache between builds
    return ws, cache, env


def server_cpu(cache: Path, ws: Path) -> float:
    """The CPU time so far of the workspace's build server and every process under it, with the
    children each has waited for."""
    sys.path.insert(0, str(REPO))
    from mk.engine import resident

    folder = resident.run_dir(cache, ws.resolve())
    pending = [(Path(folder) / resident.PID).read_text(encoding="ascii").strip()]
    seconds = 0.0
    while pending:
        pid = pending.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rpartition(")")[2].split()
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending += (task / "children").read_text(encoding="ascii").split()
        except FileNotFoundError:  # gone meanwhile
            continue
        seconds += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return seconds


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return elapsed


def peak_rss_mb(cmd: list[str], cwd: Path, env: dict[str, str]) -> float | None:
    """The command's peak RSS from GNU time (a small parent, so the figure is the command's own)."""
    if not os.access("/usr/bin/time", os.X_OK):
        return None
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], cwd=cwd, env=env, capture_output=True, text=True,
                            check=True)
    return int(result.stderr.split()[-1]) * 1024 / 1e6


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
    (ws / "os" / "BUILD").write_text(build_file())
    shutil.copy(LOCK, ws / "os" / LOCK.name)
    env = {k: v for k, v in os.environ.items() if k not in ("MK_CACHE_DIR", "PYTHONDONTWRITEBYTECODE")}
    env["MK_CACHE_DIR"] = str(cache)
    env["MK_SERVER"] = "0"  # the first build, and the --no-server case
    served = {**env, "MK_SERVER": "1"}
    print(f"fetching the packages of {LOCK.name} (network)...", file=sys.stderr)
    run([mk_exe(), "build", TARGET], ws, env)
    lock = json.loads(LOCK.read_text())
    debs = export_debs(cache, lock, work / "repo", only_these=True)
    size = sum(p.stat().st_size for p in debs)

    def cold_ac() -> None:
        shutil.rmtree(cache / "ac", ignore_errors=True)
        shutil.rmtree(ws / "mk-out", ignore_errors=True)

    def mk_cold_ac() -> float:
        cold_ac()
        return run([mk_exe(), "build", TARGET], ws, env)

    server_cpu_used: list[float] = []

    def mk_served() -> float:
        # A fresh server, which remembers no build of the target (an earlier one would answer from
        # memory with the action cache gone); started by a query, which analyses but runs nothing.
        run([mk_exe(), "shutdown"], ws, served)
        cold_ac()
        run([mk_exe(), "query", "deps", TARGET], ws, served)
        before, client = server_cpu(cache, ws), children_cpu()
        elapsed = run([mk_exe(), "build", TARGET], ws, served)
        server_cpu_used.append(server_cpu(cache, ws) - before + children_cpu() - client)
        return elapsed

    largest_first = sorted(debs, key=lambda p: p.stat().st_size, reverse=True)

    def xz_limit() -> float:
        def member(deb: Path) -> None:
            with open(os.devnull, "wb") as null:
                subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=null, check=True)

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(member, largest_first))
        return time.perf_counter() - started

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

    # Interleaved, so that a burst of load elsewhere on the machine weighs on every case alike.
    cases: list[tuple[str, Callable[[], float]]] = [(SERVER_CASE, mk_served), (NO_SERVER_CASE, mk_cold_ac)]
    if shutil.which("dpkg-deb"):
        cases += [(LIMIT_CASE, xz_limit), ("dpkg-deb -x, each package", dpkg_deb)]
    if shutil.which("mmdebstrap"):
        cases.append(("mmdebstrap --variant=extract", mmdebstrap))
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    cpu: dict[str, list[float]] = {name: [] for name, _ in cases}  # user + system of the children
    for _ in range(runs):
        for name, case in cases:
            before = children_cpu()
            times[name].append(case())
            cpu[name].append(children_cpu() - before)
            if name == SERVER_CASE:  # the build's, without the shutdown's and query's
                cpu[name][-1] = server_cpu_used[-1]
    run([mk_exe(), "shutdown"], ws, served)
    cold_ac()
    rss = peak_rss_mb([mk_exe(), "build", TARGET], ws, env)
    mk_time = statistics.median(times[SERVER_CASE])
    print(f"{len(debs)} packages, {size / 2**20:.1f} MiB of .debs; median of {runs} runs; {os.cpu_count()} CPUs; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
    print(f"{'case':42} {'median':>8} {'min':>8} {'CPU s':>6}  mk faster by")
    for name, _ in cases:
        ratio = statistics.median(times[name]) / mk_time
        print(f"{name:42} {statistics.median(times[name]):7.2f}s {min(times[name]):7.2f}s "
              f"{statistics.median(cpu[name]):6.2f}  {ratio:5.2f}x")
    if LIMIT_CASE in times:
        for name in (SERVER_CASE, NO_SERVER_CASE):
            ratio = statistics.median(times[name]) / statistics.median(times[LIMIT_CASE])
            verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
            cpu_ratio = statistics.median(cpu[name]) / statistics.median(cpu[LIMIT_CASE])
            how = "through the server" if name == SERVER_CASE else "--no-server"
            print(f"{verdict}  mk {how} takes {ratio:.2f}x the xz limit (target <= {TARGET_RATIO}x); "
                  f"{cpu_ratio:.2f}x its CPU time")
    if rss is not None:
        print(f"{'PASS' if rss < 200 else 'FAIL'}  mk peak RSS {rss:.0f} MB (target < 200 MB)")
    return 0


def export_debs(cache: Path, lock: dict[str, list[dict[str, str]]], repo: Path, only_these: bool = False) -> list[Path]:
    """The locked .debs out of mk's store, plus a Packages index so mmdebstrap can use them.

    With `only_these`, the index drops dependency fields, so apt takes exactly this set even
    where the lockfile excluded a dependency (as mk's examples exclude maintainer-script tools)."""
    sys.path.insert(0, str(REPO))
    from mk.cache.cas import ContentStore
    from mk.cache.fixed_outputs import FixedOutputs

    repo.mkdir()
    pinned = FixedOutputs(ContentStore(cache), None)
    debs, paragraphs = [], []
    for package in lock["packages"]:
        deb = repo / Path(package["path"]).name
        if not pinned.from_store(package["sha256"], deb):
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
