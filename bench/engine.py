#!/usr/bin/env python3
"""Engine benchmark: mk against Bazel on synthetic genrule graphs.

For each size N it writes two equivalent workspaces (one for mk, one for Bazel) of N genrule
targets and times, for each tool:

- cold:     the first build, with an empty cache (mk: a fresh MK_CACHE_DIR; Bazel: an empty
            output base, with its server already started so JVM start-up is not counted);
- no-op:    a rebuild with nothing changed (mk: a fresh `mk build //...` process each time;
            Bazel: a warm server), median of --runs runs after one untimed warm-up;
- one-leaf: a rebuild after one leaf source file gets new bytes, median of --leaf-runs runs
            (each run writes bytes never seen before, so no cache can answer it).

Then it measures mk's resident build server (mk.server) on the same workspace and cache: an
untimed first build starts the server and loads the graph, then the same no-op and one-leaf
builds, each a fresh `mk` client process (MK_SERVER=1); and the peak RSS of mk's server and of
Bazel's. Targets (issue 16): no-op <= 0.2x Bazel's, one-leaf <= 0.5x Bazel's, peak RSS < 200 MB.

It also times a no-op `mk build //...` of a 100-target workspace from a cold process, whose
target is 150 ms, and the same through the server, client start-up included (target 50 ms).

Graph shape, per package of 100 targets: 8 chains of depth 10, each starting from its own leaf
source file; a `join` target that fans in the 8 chain ends; 19 fan-out targets that each read
`join`. The root package holds `//:top`, which fans in every package's `join` (package g0000
has 18 fan-out targets instead of 19, so the total is exactly N). Every command is a cheap
`(cat $(SRCS); echo NAME) > $@`, so every output differs and a leaf change reaches all of its
dependents: 10 chain links + join + the package's fan-outs + top.

Only the standard library is used. Run from anywhere:

    python3 bench/engine.py                 # sizes 1000,10000
    python3 bench/engine.py --quick         # sizes 100,1000
    python3 bench/engine.py --sizes 2000 --no-bazel
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_SIZE = 100
CHAINS = 8
DEPTH = 10
FANOUT = PACKAGE_SIZE - CHAINS * DEPTH - 1  # 19
NOOP_TARGET_SECONDS = 0.150
SERVER_NOOP_TARGET_SECONDS = 0.050
SERVER_NOOP_RATIO = 0.2  # of Bazel's warm-server no-op, 10,000 targets
SERVER_LEAF_RATIO = 0.5  # of Bazel's one-leaf rebuild, 10,000 targets
RSS_TARGET_MB = 200
DEFAULT_TIMEOUT = 3600.0
# Every mk command runs in a sandbox whose root is a toolchain; these workspaces use the host's
# /usr, as Bazel here runs with the host's tools too.
HOST_MK_TOML = 'toolchain = "host"\n'

_MK_SUMMARY = re.compile(
    r"^mk: (\d+) targets, (\d+) actions: (\d+) executed, (\d+) cached "
    r"\((\d+) local, (\d+) remote\) in ([\d.]+) s$",
    re.MULTILINE,
)
_BAZEL_PROCESSES = re.compile(r"INFO: \d+ process(?:es)?: ([^\n]*?)\.?$", re.MULTILINE)
_BAZEL_STRATEGY = re.compile(r"(\d+) ([a-z][a-z -]*)")


class BenchError(Exception):
    pass


# ---- workspace generation ------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    root: Path
    targets: int
    leaf: Path  # the source file the one-leaf-change build rewrites
    leaf_dependents: int  # actions that must run after `leaf` changes


def _genrule(name: str, srcs: Sequence[str], out: str) -> str:
    src_list = ", ".join(f'"{s}"' for s in srcs)
    return (
        f'genrule(\n    name = "{name}",\n    srcs = [{src_list}],\n    outs = ["{out}"],\n'
        f'    cmd = "(cat $(SRCS); echo {name}) > $@",\n)\n'
    )


def generate(root: Path, n: int, bazel: bool, mk_toml: str = HOST_MK_TOML) -> Workspace:
    """Writes a workspace of exactly `n` genrule targets under `root` (for mk, with `mk_toml`)."""
    if n < PACKAGE_SIZE or n % PACKAGE_SIZE:
        raise BenchError(f"size {n} must be a positive multiple of {PACKAGE_SIZE}")
    packages = n // PACKAGE_SIZE
    root.mkdir(parents=True)
    if bazel:
        (root / "WORKSPACE").write_text('workspace(name = "bench")\n')
    else:
        (root / "mk.toml").write_text(mk_toml)
    # Bazel checks visibility across packages; mk has no `package()` and needs none.
    header = 'package(default_visibility = ["//visibility:public"])\n\n' if bazel else ""
    joins: list[str] = []
    for p in range(packages):
        pkg = f"g{p:04d}"
        folder = root / pkg
        folder.mkdir()
        rules: list[str] = []
        for c in range(CHAINS):
            (folder / f"c{c}.txt").write_text(f"leaf {pkg}/c{c}\n")
            for d in range(DEPTH):
                src = f"c{c}.txt" if d == 0 else f":c{c}_{d - 1}"
                rules.append(_genrule(f"c{c}_{d}", [src], f"c{c}_{d}.out"))
        rules.append(_genrule("join", [f":c{c}_{DEPTH - 1}" for c in range(CHAINS)], "join.out"))
        for f in range(_fanout(p)):
            rules.append(_genrule(f"f{f}", [":join"], f"f{f}.out"))
        (folder / "BUILD").write_text(header + "\n".join(rules))
        joins.append(f"//{pkg}:join")
    (root / "BUILD").write_text(_genrule("top", joins, "top.out"))
    middle = packages // 2
    return Workspace(
        root=root,
        targets=n,
        leaf=root / f"g{middle:04d}" / "c0.txt",
        leaf_dependents=DEPTH + 1 + _fanout(middle) + 1,
    )


def _fanout(package_index: int) -> int:
    return FANOUT - 1 if package_index == 0 else FANOUT


# ---- running the tools ---------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    seconds: float  # wall time of the whole command, as a user would see it
    executed: int  # actions (mk) or processes (Bazel) that actually ran


@dataclass
class Phases:
    cold: Run | None = None
    noop: list[Run] = field(default_factory=list)
    leaf: list[Run] = field(default_factory=list)
    error: str | None = None


def timed(cmd: Sequence[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd)} timed out after {timeout:.0f} s") from None
    seconds = time.perf_counter() - started
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-15:])
        raise BenchError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    return seconds, output


def mk_env(cache_dir: Path, server: bool = False) -> dict[str, str]:
    """The environment of an mk process using `cache_dir`, through the build server or not."""
    env = {**os.environ, "MK_CACHE_DIR": str(cache_dir), "MK_SERVER": "1" if server else "0"}
    # An installed mk has its bytecode compiled; with this set, every module edited since
    # its .pyc was written is recompiled on every run, which is not what users see.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def precompile(mk_exe: str) -> None:
    """Compiles the bytecode of mk and of its interpreter's packages once, as an install would."""
    resolved = shutil.which(mk_exe) or mk_exe
    with open(resolved, "rb") as f:
        first = f.readline()
    python = first[2:].decode().strip() if first.startswith(b"#!") else sys.executable
    script = ("import compileall, os, site, sys, mk; "
              "folders = [os.path.dirname(mk.__file__), *site.getsitepackages()]; "
              "sys.exit(0 if all(compileall.compile_dir(d, quiet=1) for d in folders) else 1)")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([python, "-c", script], env=env, check=True, stdin=subprocess.DEVNULL)


class Mk:
    def __init__(self, exe: str, cache_dir: Path, timeout: float, args: Sequence[str] = (), server: bool = False
                 ) -> None:
        self.exe = exe
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.args = list(args)  # before the targets, e.g. ["-j", "2"]
        self.server = server

    def build(self, ws: Path, targets: Sequence[str] = ("//...",)) -> Run:
        return self.command(ws, "build", *self.args, *targets)

    def command(self, ws: Path, *words: str) -> Run:
        """`mk WORDS...` (a subcommand that ends with the summary line: build, image) in `ws`."""
        seconds, output = timed([self.exe, *words], ws, mk_env(self.cache_dir, self.server), self.timeout)
        m = _MK_SUMMARY.search(output)
        if m is None:
            raise BenchError(f"no summary line in mk's output:\n{output[-2000:]}")
        return Run(seconds, int(m.group(3)))

    def server_pid(self, ws: Path) -> int:
        run = Path(self.cache_dir) / "run"
        (pid_file,) = run.glob("*/server.pid")  # one workspace per cache here
        return int(pid_file.read_text())

    def blind(self) -> bool:
        """Whether the server said in its log that it could not watch the workspace (no inotify
        instance left for this user, say): its figures are then those of a server that checks
        every file on every build."""
        return any("cannot watch" in log.read_text(errors="replace")
                   for log in (Path(self.cache_dir) / "run").glob("*/server.log"))

    def shutdown(self, ws: Path) -> None:
        subprocess.run([self.exe, "shutdown"], cwd=ws, env=mk_env(self.cache_dir, True), capture_output=True,
                       timeout=120, check=False)


def peak_rss_mb(pid: int) -> float:
    """The peak resident set of process `pid` so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM for process {pid}")


class Bazel:
    def __init__(
        self, exe: str, user_root: Path, timeout: float, strategy: str = "local",
        args: Sequence[str] = (),
    ) -> None:
        self.exe = exe
        self.user_root = user_root
        self.build_args = [f"--spawn_strategy={strategy}", *args]
        # Keep the system rc: Debian's /etc/bazel/bazelrc sets --install_base, without which
        # the bazel-bootstrap binary cannot start.
        self.startup = [f"--output_user_root={user_root}", "--nohome_rc", "--noworkspace_rc",
                        "--max_idle_secs=900"]
        self.timeout = timeout

    def _cmd(self, *args: str) -> list[str]:
        return [self.exe, *self.startup, *args]

    def start(self, ws: Path) -> None:
        """Starts the server for `ws` (untimed) without loading any package."""
        timed(self._cmd("info", "output_base"), ws, dict(os.environ), self.timeout)

    def server_pid(self, ws: Path) -> int:
        return int(timed(self._cmd("info", "server_pid"), ws, dict(os.environ), self.timeout)[1].split()[-1])

    def build(self, ws: Path) -> Run:
        seconds, output = timed(
            self._cmd(
                "build", *self.build_args, "--noshow_progress", "--color=no",
                "--curses=no", "--show_result=0", "--", "//...",
            ),
            ws, dict(os.environ), self.timeout,
        )
        return Run(seconds, _bazel_executed(output))

    def shutdown(self, ws: Path) -> None:
        subprocess.run(self._cmd("shutdown"), cwd=ws, capture_output=True, timeout=120, check=False)


def _bazel_executed(output: str) -> int:
    """Spawns that ran, from e.g. `INFO: 32 processes: 1 internal, 31 local.`"""
    matches = _BAZEL_PROCESSES.findall(output)
    if not matches:
        raise BenchError(f"no process count in Bazel's output:\n{output[-2000:]}")
    return sum(
        int(count) for count, kind in _BAZEL_STRATEGY.findall(matches[-1])
        if kind.strip() != "internal" and "cache hit" not in kind
    )


# ---- measuring -----------------------------------------------------------------------------


_counter = 0


def _touch_leaf(leaf: Path) -> None:
    """Gives `leaf` bytes it has never had, so no cache can hold the result."""
    global _counter
    _counter += 1
    leaf.write_text(f"{leaf.read_text()}changed {_counter} {time.time_ns()}\n")


def measure(
    name: str, ws: Workspace, build: Callable[[Path], Run], runs: int, leaf_runs: int,
    log: Callable[[str], None], cold: bool = True,
) -> Phases:
    """Times the phases; without `cold`, the workspace is built already (the build server's rows)."""
    phases = Phases()
    try:
        if cold:
            phases.cold = build(ws.root)
            log(f"  {name} cold: {phases.cold.seconds:.2f} s, {phases.cold.executed} executed")
        build(ws.root)  # warm-up: settles stat caches and the like (and starts a server), untimed
        phases.noop = [build(ws.root) for _ in range(runs)]
        log(f"  {name} no-op: " + ", ".join(f"{r.seconds * 1000:.0f}" for r in phases.noop) + " ms")
        for _ in range(leaf_runs):
            _touch_leaf(ws.leaf)
            phases.leaf.append(build(ws.root))
        log(f"  {name} one-leaf: " + ", ".join(f"{r.seconds:.2f}" for r in phases.leaf) + " s")
    except BenchError as e:
        phases.error = str(e)
        log(f"  {name}: FAILED: {e}")
    return phases


def check(name: str, size: int, ws: Workspace, phases: Phases) -> list[str]:
    warnings: list[str] = []
    if phases.cold is not None and phases.cold.executed != size:
        warnings.append(f"{name} N={size}: cold build executed {phases.cold.executed}, expected {size}")
    for run in phases.noop:
        if run.executed != 0:
            warnings.append(f"{name} N={size}: no-op build executed {run.executed}, expected 0")
            break
    for run in phases.leaf:
        if run.executed != ws.leaf_dependents:
            warnings.append(
                f"{name} N={size}: one-leaf build executed {run.executed}, "
                f"expected {ws.leaf_dependents}"
            )
            break
    return warnings


# ---- reporting -----------------------------------------------------------------------------


def median(runs: list[Run]) -> Run | None:
    if not runs:
        return None
    return Run(
        statistics.median(r.seconds for r in runs),
        int(statistics.median(r.executed for r in runs)),
    )


def fmt_time(run: Run | None) -> str:
    if run is None:
        return "-"
    return f"{run.seconds * 1000:.0f} ms" if run.seconds < 1 else f"{run.seconds:.2f} s"


def _fmt_exec(run: Run | None) -> str:
    return "-" if run is None else str(run.executed)


def _ratio(a: Run | None, b: Run | None) -> str:
    if a is None or b is None or b.seconds == 0:
        return "-"
    return f"{a.seconds / b.seconds:.2f}x"


@dataclass(frozen=True)
class SizeResult:
    size: int
    mk: Phases
    server: Phases | None  # mk through its build server
    bazel: Phases | None
    rss_mb: tuple[float | None, float | None] = (None, None)  # peak RSS of mk's server, of Bazel's


def table(results: list[SizeResult]) -> str:
    header = ("N", "phase", "mk wall", "mk exec", "bazel wall", "bazel exec", "mk/bazel")
    rows: list[tuple[str, ...]] = [header]
    for result in results:
        size, bazel = result.size, result.bazel
        for label, mk, pick in (
            ("cold", result.mk, lambda p: p.cold),
            ("no-op (median)", result.mk, lambda p: median(p.noop)),
            ("one-leaf (median)", result.mk, lambda p: median(p.leaf)),
            ("server no-op (median)", result.server, lambda p: median(p.noop)),
            ("server one-leaf (median)", result.server, lambda p: median(p.leaf)),
        ):
            if mk is None:
                continue
            m: Run | None = pick(mk)
            b: Run | None = pick(bazel) if bazel is not None else None
            rows.append((str(size), label, fmt_time(m), _fmt_exec(m), fmt_time(b),
                         _fmt_exec(b), _ratio(m, b)))
        server_rss, bazel_rss = result.rss_mb
        if server_rss is not None:
            rows.append((str(size), "server peak RSS", f"{server_rss:.0f} MB", "",
                         "-" if bazel_rss is None else f"{bazel_rss:.0f} MB", "",
                         "-" if bazel_rss is None else f"{server_rss / bazel_rss:.2f}x"))
    return format_rows(rows, left=1)


def server_verdicts(results: list[SizeResult]) -> list[str]:
    """The build server's figures against issue 16's targets, one line each."""
    lines = []
    for result in results:
        if result.server is None:
            continue
        verdicts: tuple[tuple[str, Callable[[Phases], Run | None], float], ...] = (
            ("no-op", lambda p: median(p.noop), SERVER_NOOP_RATIO),
            ("one-leaf", lambda p: median(p.leaf), SERVER_LEAF_RATIO))
        for phase, pick, limit in verdicts:
            m, b = pick(result.server), pick(result.bazel) if result.bazel is not None else None
            if m is not None and b is not None and b.seconds:
                ratio = m.seconds / b.seconds
                lines.append(f"mk server {phase}, {result.size} targets: {ratio:.2f}x Bazel (target <= {limit}x: "
                             f"{'ok' if ratio <= limit else 'OVER TARGET'})")
        if result.rss_mb[0] is not None:
            lines.append(f"mk server peak RSS, {result.size} targets: {result.rss_mb[0]:.0f} MB (target < "
                         f"{RSS_TARGET_MB} MB: {'ok' if result.rss_mb[0] < RSS_TARGET_MB else 'OVER TARGET'})")
    return lines


def format_rows(rows: Sequence[Sequence[str]], left: int) -> str:
    """`rows` (the first is the header) as aligned columns; column `left` is left-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i != left else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------


def default_mk() -> str:
    beside = Path(sys.executable).parent / "mk"
    repo_venv = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "mk"
    for candidate in (beside, repo_venv):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("mk") or "mk"


def _sizes(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text}") from None


def rmtree(path: Path) -> None:
    # Bazel leaves read-only directories behind; make them writable and retry.
    def onerror(func: Callable[..., object], p: str, _exc: object) -> None:
        os.chmod(os.path.dirname(p), 0o755)
        if os.path.isdir(p):
            os.chmod(p, 0o755)
        func(p)

    shutil.rmtree(path, onerror=onerror)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_tool_options(parser: argparse.ArgumentParser) -> None:
    """--mk, --bazel, --no-bazel and --timeout, as every engine benchmark takes them."""
    parser.add_argument("--mk", default=default_mk(), help="the mk executable")
    parser.add_argument("--bazel", default=shutil.which("bazel"), help="the bazel executable")
    parser.add_argument("--no-bazel", action="store_true", help="measure mk only")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds any single build may take")


def prepare(args: argparse.Namespace) -> str | None:
    """Compiles mk's bytecode; returns the bazel executable to measure, if any."""
    bazel_exe: str | None = None if args.no_bazel else args.bazel
    if bazel_exe is None and not args.no_bazel:
        log("bazel is not on PATH: measuring mk only")
    precompile(args.mk)
    return bazel_exe


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=_sizes, default=[1000, 10000],
                        help="comma-separated target counts, multiples of 100 (default 1000,10000)")
    parser.add_argument("--quick", action="store_true", help="sizes 100,1000")
    parser.add_argument("--runs", type=int, default=5, help="timed no-op builds (default 5)")
    parser.add_argument("--leaf-runs", type=int, default=3,
                        help="timed one-leaf-change builds (default 3)")
    add_tool_options(parser)
    parser.add_argument("--keep", action="store_true", help="keep the generated workspaces")
    args = parser.parse_args(argv)
    sizes: list[int] = [100, 1000] if args.quick else args.sizes

    bazel_exe = prepare(args)
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="mk-bench-"))
    log(f"workspaces in {tmp}; mk = {args.mk}; bazel = {bazel_exe or '-'}")
    results: list[SizeResult] = []
    warnings: list[str] = []
    started = time.perf_counter()
    try:
        for size in sizes:
            log(f"N={size}")
            mk_ws = generate(tmp / f"mk-{size}", size, bazel=False)
            mk = Mk(args.mk, tmp / f"mk-cache-{size}", args.timeout)
            mk_phases = measure("mk", mk_ws, mk.build, args.runs, args.leaf_runs, log)
            warnings += check("mk", size, mk_ws, mk_phases)
            if mk_phases.error:
                warnings.append(f"mk N={size}: {mk_phases.error}")
            server = Mk(args.mk, tmp / f"mk-cache-{size}", args.timeout, server=True)
            server_phases = measure("mk server", mk_ws, server.build, args.runs, args.leaf_runs, log, cold=False)
            warnings += check("mk server", size, mk_ws, server_phases)
            server_rss: float | None = None
            try:
                server_rss = peak_rss_mb(server.server_pid(mk_ws.root))
            except (BenchError, OSError, ValueError) as e:
                warnings.append(f"mk server N={size}: no peak RSS: {e}")
            finally:
                server.shutdown(mk_ws.root)
            if server.blind():
                warnings.append(f"mk server N={size}: it could not watch the workspace (see its log): these are "
                                "the figures of a server without inotify")
            if server_phases.error:
                warnings.append(f"mk server N={size}: {server_phases.error}")
            bazel_rss: float | None = None
            bazel_phases: Phases | None = None
            if bazel_exe is not None:
                bz_ws = generate(tmp / f"bazel-{size}", size, bazel=True)
                bazel = Bazel(bazel_exe, tmp / "bazel-root", args.timeout)
                try:
                    bazel.start(bz_ws.root)
                except BenchError as e:
                    log(f"  bazel cannot start, measuring mk only: {e}")
                    warnings.append(f"bazel N={size}: could not start: {e}")
                    bazel_exe = None
                else:
                    bazel_phases = measure(
                        "bazel", bz_ws, bazel.build, args.runs, args.leaf_runs, log
                    )
                    warnings += check("bazel", size, bz_ws, bazel_phases)
                    if bazel_phases.error:
                        warnings.append(f"bazel N={size}: {bazel_phases.error}")
                    try:
                        bazel_rss = peak_rss_mb(bazel.server_pid(bz_ws.root))
                    except (BenchError, OSError, ValueError) as e:
                        warnings.append(f"bazel N={size}: no peak RSS: {e}")
                finally:
                    bazel.shutdown(bz_ws.root)
            results.append(SizeResult(size, mk_phases, server_phases, bazel_phases, (server_rss, bazel_rss)))

        # The interactive case: a small workspace, nothing to do, a fresh process.
        log("N=100 no-op target check")
        small = generate(tmp / "mk-small", PACKAGE_SIZE, bazel=False)
        small_mk = Mk(args.mk, tmp / "mk-cache-small", args.timeout)
        small_noop: list[Run] = []
        try:
            small_mk.build(small.root)
            small_mk.build(small.root)
            small_noop = [small_mk.build(small.root) for _ in range(max(args.runs, 5))]
        except BenchError as e:
            warnings.append(f"mk N=100 no-op: {e}")
        small_server = Mk(args.mk, tmp / "mk-cache-small", args.timeout, server=True)
        server_noop: list[Run] = []
        try:
            small_server.build(small.root)  # starts the server
            small_server.build(small.root)
            server_noop = [small_server.build(small.root) for _ in range(max(args.runs, 5))]
        except BenchError as e:
            warnings.append(f"mk server N=100 no-op: {e}")
        finally:
            small_server.shutdown(small.root)
        if small_server.blind():
            warnings.append("mk server N=100: it could not watch the workspace (see its log)")
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            rmtree(tmp)

    print(f"mk engine benchmark: {os.cpu_count()} CPUs, genrule graphs of {CHAINS} chains x "
          f"{DEPTH} + fan-in + {FANOUT} fan-out per {PACKAGE_SIZE}-target package, "
          f"no-op median of {args.runs} (after 1 warm-up), one-leaf median of {args.leaf_runs}")
    print("mk: fresh process per build, fresh MK_CACHE_DIR for cold; mk server: a fresh client per build, "
          "a warm server (after one untimed build); bazel: warm server, --spawn_strategy=local, empty output base "
          "for cold")
    print()
    print(table(results))
    print()
    median_small = median(small_noop)
    if median_small is not None:
        verdict = "ok" if median_small.seconds < NOOP_TARGET_SECONDS else "OVER TARGET"
        print(f"mk no-op, 100 targets, cold process: median {median_small.seconds * 1000:.0f} ms "
              f"(min {min(r.seconds for r in small_noop) * 1000:.0f} ms; target "
              f"< {NOOP_TARGET_SECONDS * 1000:.0f} ms: {verdict})")
        if median_small.executed != 0:
            warnings.append(f"mk N=100: no-op executed {median_small.executed}, expected 0")
    median_server = median(server_noop)
    if median_server is not None:
        verdict = "ok" if median_server.seconds <= SERVER_NOOP_TARGET_SECONDS else "OVER TARGET"
        print(f"mk server no-op, 100 targets, client start-up included: median {median_server.seconds * 1000:.0f} "
              f"ms (min {min(r.seconds for r in server_noop) * 1000:.0f} ms; target "
              f"<= {SERVER_NOOP_TARGET_SECONDS * 1000:.0f} ms: {verdict})")
        if median_server.executed != 0:
            warnings.append(f"mk server N=100: no-op executed {median_server.executed}, expected 0")
    for line in server_verdicts(results):
        print(line)
    print(f"total bench time: {time.perf_counter() - started:.0f} s; 1-minute load average "
          f"{load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end (other work on the "
          "machine skews every figure)")
    for w in warnings:
        print(f"WARNING: {w}")
    return 1 if warnings else 0


if __name__ == "__main__":
    sys.exit(main())
