#!/usr/bin/env python3
"""Sandbox benchmark: what mk's bubblewrap sandbox costs, against Bazel's linux-sandbox.

Two measurements, side by side in one run:

1. The cold build of engine.py's genrule graph at N = --targets (1000: packages of 8 chains of
   depth 10, a fan-in `join` and 19 fan-outs, and `//:top`; every command is
   `(cat $(SRCS); echo NAME) > $@`), with -j 2 / --jobs=2, in four set-ups:
   - mk, sandboxed on a locked toolchain tree: the workspace holds `//tc:toolchain`, a copy of
     `//examples:toolchain` with a copy of its lockfile, and mk.toml says
     `toolchain = "//tc:toolchain"`. The toolchain is fetched, unpacked and written out once
     into a seed cache (timed separately: the one-time set-up); each timed run starts from a
     copy of that cache, so no genrule result is cached but the toolchain is ready;
   - mk, sandboxed on the host's /usr (`toolchain = "host"`), fresh cache;
   - Bazel with --spawn_strategy=linux-sandbox, and with --spawn_strategy=local as a reference:
     warm server (started untimed), empty output base.
   Each set-up runs --runs times, the set-ups taking turns in a rotating order; medians are
   reported.
2. The per-action overhead of the sandbox itself: the bubblewrap command line mk builds
   (mk.engine.sandbox.bubblewrap() + arguments(Layout(...))) around /bin/true, with the written-out
   toolchain as its root (and again with the host's /usr), a scratch execroot holding one input
   inside the one writable output folder, launched --launches times, each right after a
   direct launch of /bin/true with the same subprocess settings; the mean difference is the
   overhead per action.

Targets: the mk sandboxed cold build at most 0.6x Bazel linux-sandbox's, and under 5 ms of
sandbox overhead per action. Run from anywhere (the Debian mirror must be reachable once):

    .venv/bin/python bench/sandbox.py
    .venv/bin/python bench/sandbox.py --runs 5 --launches 500
    .venv/bin/python bench/sandbox.py --no-bazel --runs 1
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine import (
    Bazel,
    BenchError,
    Mk,
    Run,
    add_tool_options,
    fmt_time,
    format_rows,
    generate,
    log,
    prepare,
    rmtree,
)

from mk.engine import sandbox
from mk.engine.execute import FIXED_PATH

REPO = Path(__file__).resolve().parent.parent
TOOLCHAIN_PACKAGE = "tc"
TOOLCHAIN_NAME = "toolchain"
TOOLCHAIN_LABEL = f"//{TOOLCHAIN_PACKAGE}:{TOOLCHAIN_NAME}"
CHECK_RATIO = 0.6  # mk sandboxed cold / Bazel linux-sandbox cold, at most
CHECK_OVERHEAD_MS = 5.0  # per action, less than
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_RULE = re.compile(r'^deb_packages\(\n    name = "toolchain",\n.*?^\)\n', re.MULTILINE | re.DOTALL)


# ---- the toolchain package ------------------------------------------------------------------


def add_toolchain(ws: Path) -> None:
    """Gives `ws` a copy of //examples:toolchain (rule and lockfile) as //tc:toolchain, its default."""
    build = (REPO / "examples" / "BUILD").read_text()
    rule = _RULE.search(build)
    if rule is None:
        raise BenchError("no deb_packages(name = \"toolchain\", ...) in examples/BUILD")
    folder = ws / TOOLCHAIN_PACKAGE
    folder.mkdir()
    (folder / "BUILD").write_text(rule.group(0).replace('"toolchain"', f'"{TOOLCHAIN_NAME}"', 1))
    shutil.copyfile(REPO / "examples" / "toolchain.lock.json", folder / f"{TOOLCHAIN_NAME}.lock.json")
    (ws / "mk.toml").write_text(f'toolchain = "{TOOLCHAIN_LABEL}"\n')


@dataclass(frozen=True)
class Seed:
    cache: Path  # a cache holding the toolchain's packages and its written-out tree
    tree: Path  # <cache>/toolchains/<digest>
    fetch: Run  # mk build //tc:toolchain from an empty cache: download + unpack
    write_out: Run  # then one genrule: writes the tree out under toolchains/


def seed(mk_exe: str, tmp: Path, timeout: float, jobs: int) -> Seed:
    ws = tmp / "seed"
    ws.mkdir()
    add_toolchain(ws)
    (ws / "BUILD").write_text('genrule(\n    name = "seed",\n    outs = ["seed.out"],\n'
                              '    cmd = "echo seed > $@",\n)\n')
    cache = tmp / "seed-cache"
    mk = Mk(mk_exe, cache, timeout, ["-j", str(jobs)])
    fetch = mk.build(ws, [TOOLCHAIN_LABEL])
    write_out = mk.build(ws, ["//:seed"])
    trees = sorted((cache / "toolchains").iterdir())
    if len(trees) != 1:
        raise BenchError(f"expected one written-out toolchain in {cache / 'toolchains'}, found {len(trees)}")
    return Seed(cache, trees[0], fetch, write_out)


# ---- cold builds ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cold:
    run: Run
    cpu: float  # seconds of CPU (user + system) of the tool and every process it waited for


@dataclass
class Setup:
    name: str
    run: Callable[[int], Cold]  # run number -> one timed cold build
    runs: list[Cold] = field(default_factory=list)


@contextlib.contextmanager
def orphans_adopted() -> Iterator[None]:
    """Within it, this process is the subreaper of its descendants, so that `children_cpu` counts
    sandboxed commands: bwrap --unshare-pid exits without waiting for the sandbox's init, which
    holds the command's CPU time, and that init, orphaned, then comes here instead of to the
    host's init. Only within: a daemon started outside (Bazel's server) stays out of the count."""
    _set_subreaper(1)
    try:
        yield
    finally:
        _set_subreaper(0)


def _set_subreaper(on: int) -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, on, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (and theirs), so far, after reaping the
    orphans it adopted that have ended (see `orphans_adopted`)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds of a running process, with those of the children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def mk_setup(name: str, mk_exe: str, tmp: Path, size: int, jobs: int, timeout: float,
             seed_cache: Path | None) -> Setup:
    """mk's cold build; on the seeded toolchain if `seed_cache`, else on the host's /usr."""
    tag = "mk-locked" if seed_cache is not None else "mk-host"

    def run(i: int) -> Cold:
        ws = generate(tmp / f"{tag}-{i}", size, bazel=False)
        cache = tmp / f"{tag}-cache-{i}"
        if seed_cache is not None:
            add_toolchain(ws.root)
            # cp -a keeps the tree's hard links and read-only folders as mk wrote them.
            subprocess.run(["cp", "-a", str(seed_cache), str(cache)], check=True)
        try:
            with orphans_adopted():
                before = children_cpu()
                result = Mk(mk_exe, cache, timeout, ["-j", str(jobs)]).build(ws.root)
                return Cold(result, children_cpu() - before)
        finally:
            rmtree(ws.root)
            rmtree(cache)

    return Setup(name, run)


def bazel_setup(name: str, bazel_exe: str, strategy: str, tmp: Path, size: int, jobs: int,
                timeout: float) -> Setup:
    def run(i: int) -> Cold:
        ws = generate(tmp / f"bazel-{strategy}-{i}", size, bazel=True)
        # The Debian system rc sets --sandbox_debug, which keeps every sandbox; turned off here.
        bazel = Bazel(bazel_exe, tmp / f"bazel-root-{strategy}-{i}", timeout, strategy,
                      [f"--jobs={jobs}", "--nosandbox_debug"])
        try:
            bazel.start(ws.root)  # a warm server on an empty output base
            server = bazel.server_pid(ws.root)
            before = children_cpu() + process_cpu(server)  # the client's and the server's (with its spawns)
            result = bazel.build(ws.root)
            return Cold(result, children_cpu() + process_cpu(server) - before)
        finally:
            bazel.shutdown(ws.root)
            rmtree(ws.root)
            rmtree(bazel.user_root)

    return Setup(name, run)


def measure_builds(setups: Sequence[Setup], runs: int, log: Callable[[str], None]) -> None:
    for i in range(runs):
        turn = i % len(setups)
        for setup in [*setups[turn:], *setups[:turn]]:  # alternate who goes first
            cold = setup.run(i)
            setup.runs.append(cold)
            log(f"  run {i + 1}: {setup.name}: {cold.run.seconds:.2f} s, {cold.cpu:.1f} s CPU, "
                f"{cold.run.executed} executed")


# ---- per-action overhead --------------------------------------------------------------------


@dataclass(frozen=True)
class Overhead:
    name: str
    direct_ms: list[float]
    sandboxed_ms: list[float]

    def diffs(self) -> list[float]:
        return [s - d for s, d in zip(self.sandboxed_ms, self.direct_ms, strict=True)]


def measure_overhead(name: str, toolchain: Path | None, work: Path, launches: int) -> Overhead:
    """/bin/true through mk's bubblewrap command line against /bin/true alone, interleaved."""
    execroot = work / "execroot"
    (execroot / "pkg").mkdir(parents=True)
    (execroot / "pkg" / "in.txt").write_text("input\n")
    layout = sandbox.Layout(toolchain, execroot, work / "tmp", ("pkg/in.txt",), ("pkg",))
    layout.tmp.mkdir()
    bwrap = sandbox.bubblewrap()  # mk probes bwrap once per process; so does this, untimed
    env = {"PATH": FIXED_PATH, "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": "/tmp", "TMPDIR": "/tmp"}

    def launch(argv: Callable[[], list[str]]) -> float:
        """Milliseconds to run the command, as mk's executor starts and waits for it."""
        with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
            started = time.perf_counter()
            code = subprocess.run(argv(), cwd=execroot, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=err, umask=0o022, start_new_session=True, check=False).returncode
            ms = (time.perf_counter() - started) * 1000
        if code != 0:
            raise BenchError(f"/bin/true exited with {code}: {(work / 'stderr').read_text()[-2000:]}")
        return ms

    def direct() -> list[str]:
        return ["/bin/true"]

    def sandboxed() -> list[str]:  # mk builds the arguments per action: counted
        return [bwrap, *sandbox.arguments(layout), "--", "/bin/true"]

    for _ in range(10):  # warm-up: page cache, dentries
        launch(direct)
        launch(sandboxed)
    result = Overhead(name, [], [])
    for _ in range(launches):
        result.direct_ms.append(launch(direct))
        result.sandboxed_ms.append(launch(sandboxed))
    return result


# ---- reporting ------------------------------------------------------------------------------


def _secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def build_table(setups: Sequence[Setup]) -> str:
    rows = [("set-up", "median", "min", "max", "runs (s)", "CPU median", "exec")]
    for s in setups:
        times = [c.run.seconds for c in s.runs]
        rows.append((s.name, _secs(statistics.median(times)), _secs(min(times)), _secs(max(times)),
                     " ".join(f"{t:.2f}" for t in times), _secs(statistics.median(c.cpu for c in s.runs)),
                     "/".join(sorted({str(c.run.executed) for c in s.runs}))))
    return format_rows(rows, left=0)


def overhead_table(results: Sequence[Overhead]) -> str:
    rows = [("sandbox root", "direct mean", "sandboxed mean", "overhead mean", "overhead median",
             "overhead p90", "fastest - fastest", f"mean < {CHECK_OVERHEAD_MS:.0f} ms")]
    for o in results:
        diffs = sorted(o.diffs())
        mean = statistics.fmean(diffs)
        rows.append((o.name, f"{statistics.fmean(o.direct_ms):.2f} ms", f"{statistics.fmean(o.sandboxed_ms):.2f} ms",
                     f"{mean:.2f} ms", f"{statistics.median(diffs):.2f} ms",
                     f"{diffs[int(len(diffs) * 0.9)]:.2f} ms", f"{min(o.sandboxed_ms) - min(o.direct_ms):.2f} ms",
                     "PASS" if mean < CHECK_OVERHEAD_MS else "MISS"))
    return format_rows(rows, left=0)


# ---- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--targets", type=int, default=1000, help="genrules, a multiple of 100 (default 1000)")
    parser.add_argument("--runs", type=int, default=3, help="cold builds per set-up (default 3)")
    parser.add_argument("--launches", type=int, default=300,
                        help="sandboxed and direct launches of /bin/true per sandbox root (default 300)")
    parser.add_argument("--jobs", type=int, default=2, help="mk -j and Bazel --jobs (default 2)")
    add_tool_options(parser)
    parser.add_argument("--keep", action="store_true", help="keep the seed cache and the overhead scratch")
    args = parser.parse_args(argv)

    bazel_exe = prepare(args)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="mk-bench-sandbox-"))
    log(f"work in {tmp}; mk = {args.mk}; bazel = {bazel_exe or '-'}")
    try:
        log("seeding a cache with the toolchain (fetch, unpack, write out)")
        seeded = seed(args.mk, tmp, args.timeout, args.jobs)
        log(f"  fetch + unpack {seeded.fetch.seconds:.2f} s; write-out + 1 genrule {seeded.write_out.seconds:.2f} s")
        setups = [
            mk_setup("mk, sandbox on locked toolchain", args.mk, tmp, args.targets, args.jobs, args.timeout,
                     seeded.cache),
            mk_setup("mk, sandbox on host /usr", args.mk, tmp, args.targets, args.jobs, args.timeout, None),
        ]
        if bazel_exe is not None:
            setups += [
                bazel_setup("bazel 4.2.3, linux-sandbox", bazel_exe, "linux-sandbox", tmp, args.targets,
                            args.jobs, args.timeout),
                bazel_setup("bazel 4.2.3, local", bazel_exe, "local", tmp, args.targets, args.jobs, args.timeout),
            ]
        log(f"cold builds of {args.targets} genrules, {args.runs} runs per set-up")
        measure_builds(setups, args.runs, log)
        log(f"per-action overhead, {args.launches} launches each")
        overheads = [
            measure_overhead("locked toolchain", seeded.tree, tmp / "overhead-toolchain", args.launches),
            measure_overhead("host /usr", None, tmp / "overhead-host", args.launches),
        ]
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            rmtree(tmp)

    print(f"mk sandbox benchmark: {os.cpu_count()} CPUs; cold build of engine.py's graph of {args.targets} "
          f"genrules, -j {args.jobs} / --jobs={args.jobs}, median of {args.runs} runs per set-up (rotating order)")
    print("mk: fresh process, fresh cache (locked toolchain: a copy of a cache holding only the written-out "
          "toolchain); bazel: warm server, empty output base, --nosandbox_debug")
    print()
    print(build_table(setups))
    print()
    print(f"one-time toolchain set-up ({TOOLCHAIN_LABEL}, a copy of //examples:toolchain): "
          f"fetch + unpack {fmt_time(seeded.fetch)}, then write-out + 1 genrule {fmt_time(seeded.write_out)}")
    warnings: list[str] = []
    for s in setups:
        if any(c.run.executed != args.targets for c in s.runs):
            warnings.append(f"{s.name}: executed {[c.run.executed for c in s.runs]}, expected {args.targets}")
    medians = {s.name: statistics.median(c.run.seconds for c in s.runs) for s in setups}
    cpu = {s.name: statistics.median(c.cpu for c in s.runs) for s in setups}
    names = [s.name for s in setups]  # locked, host[, linux-sandbox, local]

    def ratio(a: int, b: int, target: float | None = None) -> None:
        wall = medians[names[a]] / medians[names[b]]
        verdict = "" if target is None else f"  (target <= {target}: {'PASS' if wall <= target else 'MISS'})"
        print(f"{names[a] + ' / ' + names[b]:<66} wall {wall:.2f}x  CPU {cpu[names[a]] / cpu[names[b]]:.2f}x"
              + verdict)

    if bazel_exe is not None:
        ratio(0, 2, CHECK_RATIO)
        ratio(1, 2)
        ratio(0, 3)
        ratio(2, 3)
    ratio(0, 1)
    print()
    print(f"per-action sandbox overhead: /bin/true through mk's bubblewrap command line vs. directly, "
          f"{args.launches} launches each (interleaved), via subprocess.run")
    print(overhead_table(overheads))
    print()
    print(f"total bench time: {time.perf_counter() - started:.0f} s; 1-minute load average {load_before:.2f} at "
          f"start, {os.getloadavg()[0]:.2f} at end (other work on the machine skews every figure)")
    for w in warnings:
        print(f"WARNING: {w}")
    return 1 if warnings else 0


if __name__ == "__main__":
    sys.exit(main())
