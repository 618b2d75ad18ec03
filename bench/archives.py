#!/usr/bin/env python3
"""Archive-writer benchmark: mk's `tar` and `cpio` writers against GNU tar (and zstd) on a large tree.

Steps, all inside one temporary work directory that is removed at the end (unless --keep):

1. Generate a tree of about --size-mib MiB, deterministic from --seed: tens of thousands of
   small files (1-64 KiB, log-uniform) in nested folders plus a few large files (50-200 MiB at
   the default size; scaled down for smaller sizes). Content is compressible-ish: 3/4 slices
   of a 16 MiB text of random words, 1/4 random bytes (zstd -3 shrinks it to about half).
2. Time GNU tar on that tree, reading the files from the page cache:
      tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf out.tar tree
      tar ... -cf - tree | zstd -T1 -<level> > out.tar.zst     (for each --gnu-zstd-levels)
3. Import the plain tar into mk as a tree (`layer(tars = ["big.tar"])`); this setup build is
   timed but not compared.
4. Time `mk build` of `tar(src = ":big")` (no compression) and of
   `cpio(src = ":big", compression = "zstd")`, with the tree already in the cache. Before each
   run the cache is put back to its state after step 3 (the files the previous run added to
   `cas/` and `ac/` are deleted, and so is the output under `mk-out/`), so every run really
   writes, stores and places its archive.

Reported per case: the writer action's own duration (from --json-events; for mk it includes
storing the output in the content store), the wall time of the whole command, throughput
(tree file bytes / time, in MiB/s), the archive size, and the peak RSS of the process (for a
pipeline, tar's plus zstd's; from wait4(2), so one fresh process per measurement). With
--runs N, the fastest run is shown, and its RSS is the largest seen; each run measures every
case once, GNU's and mk's one after the other.

Targets (issue 16): mk's peak RSS < 200 MB, mk's uncompressed tar writer at >= 0.5x the
throughput of GNU tar, and mk's cpio+zstd writer at >= 0.8x that of GNU tar | zstd -T0 -3
(the writer action's duration against the peer's whole command; the wall ratio is shown too).

Only the standard library is used. Run from anywhere:

    python3 bench/archives.py                    # ~1 GiB tree
    python3 bench/archives.py --size-mib 256 --runs 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
KiB = 1 << 10
GNU_TAR_FLAGS = ["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0"]
RSS_TARGET_MB = 200.0
TARGETS = {"mk tar (none)": 0.5, "mk cpio (zstd)": 0.8}  # writer throughput / its GNU peer's
PACKAGE = "bench"
TREE_DIR = "tree"
DEFAULT_TIMEOUT = 3600.0


class BenchError(Exception):
    pass


# ---- tree generation -----------------------------------------------------------------------


@dataclass(frozen=True)
class TreeStats:
    files: int
    dirs: int
    large_files: int
    file_bytes: int


class ContentSource:
    """Deterministic, compressible-ish bytes: slices of a random-word text mixed with random bytes."""

    POOL_BYTES = 16 * MiB
    RANDOM_SHARE = 0.25

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        letters = "abcdefghijklmnopqrstuvwxyz"
        vocab = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(2000)]
        parts: list[str] = []
        size = 0
        while size < self.POOL_BYTES:
            line = " ".join(rng.choices(vocab, k=rng.randint(4, 16))) + "\n"
            parts.append(line)
            size += len(line)
        self.pool = "".join(parts).encode()[: self.POOL_BYTES]

    def chunks(self, size: int) -> list[bytes]:
        rng = self.rng
        out: list[bytes] = []
        left = size
        while left > 0:
            n = min(left, rng.randint(512, 16 * KiB))
            if rng.random() < self.RANDOM_SHARE:
                out.append(rng.randbytes(n))
            else:
                start = rng.randrange(0, len(self.pool) - n)
                out.append(self.pool[start : start + n])
            left -= n
        return out


def _large_sizes(rng: random.Random, total: int, size_mib: int) -> list[int]:
    """About 40% of the bytes in a few large files, 50-200 MiB each at 1024 MiB (scaled below that)."""
    scale = min(1.0, size_mib / 1024)
    low, high = max(1, int(50 * scale * MiB)), max(2, int(200 * scale * MiB))
    budget = int(total * 0.4)
    sizes: list[int] = []
    while budget >= low:
        size = min(budget, rng.randint(low, high))
        sizes.append(size)
        budget -= size
    return sizes


def _small_size(rng: random.Random) -> int:
    return int(math.exp(rng.uniform(math.log(1 * KiB), math.log(64 * KiB))))


def generate_tree(root: Path, size_mib: int, seed: int) -> TreeStats:
    rng = random.Random(seed)
    content = ContentSource(rng)
    total = size_mib * MiB
    large = _large_sizes(rng, total, size_mib)
    small_budget = total - sum(large)
    exts = [".txt", ".so", ".py", ".conf", ".dat", ""]
    files = dirs = written = 0
    leaf_dirs: list[Path] = []
    dir_id = 0
    while written < small_budget:
        # Three levels of nesting: p###/q#/r#, 20-100 files in each leaf folder.
        leaf = root / f"p{dir_id // 64:03d}" / f"q{(dir_id // 8) % 8}" / f"r{dir_id % 8}"
        leaf.mkdir(parents=True, exist_ok=True)
        leaf_dirs.append(leaf)
        for index in range(rng.randint(20, 100)):
            size = min(_small_size(rng), small_budget - written)
            if size <= 0:
                break
            path = leaf / f"f{index:03d}{rng.choice(exts)}"
            with open(path, "wb") as f:
                f.write(b"".join(content.chunks(size)))
            if rng.random() < 0.1:
                os.chmod(path, 0o755)
            files += 1
            written += size
        dir_id += 1
    for index, size in enumerate(large):
        folder = rng.choice(leaf_dirs) if leaf_dirs else root
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"large-{index}.img", "wb") as f:
            left = size
            while left > 0:
                step = min(left, 8 * MiB)
                f.write(b"".join(content.chunks(step)))
                left -= step
        files += 1
        written += size
    dirs = sum(1 for _ in root.rglob("*") if _.is_dir())
    return TreeStats(files=files, dirs=dirs, large_files=len(large), file_bytes=written)


# ---- measuring processes -------------------------------------------------------------------


@dataclass
class Measurement:
    name: str
    wall: float  # seconds, whole command
    rss_kib: int  # peak resident set size (sum over a pipeline's processes)
    out_bytes: int
    action: float | None = None  # mk: the writer action's duration from --json-events


TIME = "/usr/bin/time"  # GNU time: a small parent, so the RSS it reports is the command's own


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> tuple[int, int]:
    """(exit status, ru_maxrss in KiB) of one child, from wait4(2).

    Without GNU time this is the fallback, and it over-reports small commands: Linux carries the
    RSS high-water mark of the process that forked a child across exec, so the benchmark's own
    RSS is a floor.
    """
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise BenchError(f"timed out: {' '.join(str(a) for a in proc.args)}")  # type: ignore[union-attr]
        time.sleep(0.005)


def _time_rss(path: Path) -> int:
    """The %M (max RSS, KiB) GNU time wrote; it puts a status line first when the command failed."""
    lines = path.read_text().split()
    path.unlink()
    return int(lines[-1]) if lines and lines[-1].isdigit() else 0


def run_pipeline(
    commands: Sequence[Sequence[str]], stdout: Path, cwd: Path, env: dict[str, str] | None, timeout: float
) -> tuple[float, int, str]:
    """Run commands as a shell-less pipeline into `stdout`; returns (wall s, summed peak RSS KiB, stderr)."""
    use_time = os.access(TIME, os.X_OK)
    procs: list[subprocess.Popen[bytes]] = []
    rss_files = [stdout.with_name(f"{stdout.name}.rss{i}") for i in range(len(commands))]
    err_path = stdout.with_name(stdout.name + ".stderr")
    results: list[tuple[int, int]] = []
    with open(stdout, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        previous: int | None = None
        try:
            for index, cmd in enumerate(commands):
                last = index == len(commands) - 1
                argv = [TIME, "-f", "%M", "-o", str(rss_files[index]), *cmd] if use_time else list(cmd)
                proc = subprocess.Popen(
                    argv, cwd=cwd, env=env, stdin=previous if previous is not None else subprocess.DEVNULL,
                    stdout=out if last else subprocess.PIPE, stderr=err,
                )
                procs.append(proc)
                if previous is not None:
                    os.close(previous)
                    previous = None
                if not last:
                    assert proc.stdout is not None
                    previous = os.dup(proc.stdout.fileno())
                    proc.stdout.close()
            deadline = time.monotonic() + timeout
            results = [_wait(p, deadline) for p in procs]
            wall = time.perf_counter() - started
        finally:
            if previous is not None:
                os.close(previous)
            for p in procs:
                if p.returncode is None:
                    p.kill()
                    os.wait4(p.pid, 0)
                    p.returncode = -9
    if use_time:
        results = [(code, _time_rss(path)) for (code, _), path in zip(results, rss_files, strict=True)]
    stderr = err_path.read_text(errors="replace")
    err_path.unlink()
    for (code, _), cmd in zip(results, commands, strict=True):
        if code != 0:
            raise BenchError(f"{' '.join(cmd)} failed with exit status {code}:\n{stderr[-3000:]}")
    return wall, sum(rss for _, rss in results), stderr


# ---- GNU tar -------------------------------------------------------------------------------


def gnu_tar(work: Path, out: Path, timeout: float) -> Measurement:
    cmd = ["tar", *GNU_TAR_FLAGS, "-cf", str(out), TREE_DIR]
    wall, rss, _ = run_pipeline([cmd], work / "gnu-tar.stdout", work, None, timeout)
    (work / "gnu-tar.stdout").unlink()
    return Measurement("GNU tar (plain)", wall, rss, out.stat().st_size)


def gnu_tar_zstd(work: Path, out: Path, level: int, threads: int, timeout: float) -> Measurement:
    tar = ["tar", *GNU_TAR_FLAGS, "-cf", "-", TREE_DIR]
    zstd = ["zstd", "-q", f"-T{threads}", f"-{level}"]
    wall, rss, _ = run_pipeline([tar, zstd], out, work, None, timeout)
    return Measurement(f"GNU tar | zstd -T{threads} -{level}", wall, rss, out.stat().st_size)


# mk's cpio writer uses zstd level 3 on every core (-T0), so that is the baseline it is held to.
BASELINE = "GNU tar | zstd -T0 -3"


# ---- mk ------------------------------------------------------------------------------------


BUILD_FILE = """\
layer(name = "big", tars = ["big.tar"])

tar(name = "big_tar", src = ":big")

cpio(name = "big_cpio", src = ":big", compression = "zstd")
"""

MK_CASES = (
    # (target, writer mnemonic, output under mk-out/<pkg>/, label)
    ("big_tar", "Tar", "big_tar.tar", "mk tar (none)"),
    ("big_cpio", "Cpio", "big_cpio.cpio.zst", "mk cpio (zstd)"),
)


class Mk:
    def __init__(self, exe: str, ws: Path, cache: Path, work: Path, timeout: float) -> None:
        self.exe = exe
        self.ws = ws
        self.cache = cache
        self.work = work
        self.timeout = timeout
        # In process: the cache is pruned between builds.
        self.env = {**os.environ, "MK_CACHE_DIR": str(cache), "MK_SERVER": "0"}
        for var in ("MK_REMOTE_CACHE", "MK_SIGNING_KEY", "MK_TRUSTED_KEYS"):
            self.env.pop(var, None)
        self._snapshot: set[str] = set()

    def build(self, target: str) -> tuple[float, int, list[dict[str, object]]]:
        events = self.work / "events.jsonl"
        events.unlink(missing_ok=True)
        cmd = [self.exe, "build", f"//{PACKAGE}:{target}", "--json-events", str(events)]
        log = self.work / "mk.log"
        wall, rss, stderr = run_pipeline([cmd], log, self.ws, self.env, self.timeout)
        log.unlink()
        with open(events) as f:
            parsed = [json.loads(line) for line in f if line.strip()]
        if not any(e.get("label") == f"//{PACKAGE}:{target}" for e in parsed):
            raise BenchError(f"mk build //{PACKAGE}:{target} wrote no event for it:\n{stderr[-3000:]}")
        return wall, rss, parsed

    def _cache_files(self) -> set[str]:
        found: set[str] = set()
        for part in ("cas", "ac"):
            base = self.cache / part
            if base.is_dir():
                for shard in os.scandir(base):
                    if shard.is_dir():
                        found.update(e.path for e in os.scandir(shard.path))
        return found

    def snapshot(self) -> None:
        self._snapshot = self._cache_files()

    def restore(self) -> None:
        """Delete what builds added to the CAS and the action cache since the snapshot."""
        for path in self._cache_files() - self._snapshot:
            os.unlink(path)

    def writer(self, target: str, mnemonic: str, output: str, name: str) -> Measurement:
        self.restore()
        out = self.ws / "mk-out" / PACKAGE / output
        out.unlink(missing_ok=True)
        wall, rss, events = self.build(target)
        by_mnemonic = {str(e["mnemonic"]): e for e in events}
        layer = by_mnemonic.get("Layer")
        if layer is None or layer["status"] != "cached":
            raise BenchError(f"the tree was not taken from the cache: {layer}")
        writer = by_mnemonic.get(mnemonic)
        if writer is None or writer["status"] != "executed":
            raise BenchError(f"the {mnemonic} action did not run: {writer}")
        duration = writer["duration"]
        assert isinstance(duration, (int, float))
        size = out.stat().st_size
        out.unlink()
        return Measurement(name, wall, rss, size, float(duration))


# ---- report --------------------------------------------------------------------------------


def _best(runs: list[Measurement]) -> Measurement:
    key: Callable[[Measurement], float] = lambda m: m.action if m.action is not None else m.wall  # noqa: E731
    best = min(runs, key=key)
    return Measurement(best.name, best.wall, max(r.rss_kib for r in runs), best.out_bytes, best.action)


def _mb(kib: int) -> float:
    return kib * 1024 / 1e6


def table(rows: list[Measurement], baselines: dict[str, Measurement], file_bytes: int) -> str:
    mib = file_bytes / MiB
    header = ("case", "action s", "wall s", "action MiB/s", "wall MiB/s", "out MiB", "peak RSS MB", "vs GNU (action)",
              "vs GNU (wall)")
    lines = [header]
    for m in rows:
        base = baselines.get(m.name)
        action_rate = mib / m.action if m.action else None
        wall_rate = mib / m.wall
        gnu_rate = mib / base.wall if base else None
        lines.append((
            m.name,
            f"{m.action:.2f}" if m.action is not None else "-",
            f"{m.wall:.2f}",
            f"{action_rate:.0f}" if action_rate else "-",
            f"{wall_rate:.0f}",
            f"{m.out_bytes / MiB:.0f}",
            f"{_mb(m.rss_kib):.1f}",
            f"{action_rate / gnu_rate:.2f}x" if action_rate and gnu_rate else "-",
            f"{wall_rate / gnu_rate:.2f}x" if gnu_rate else "-",
        ))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for index, row in enumerate(lines):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                  strict=True))))
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def check_targets(mk_rows: list[Measurement], baselines: dict[str, Measurement]) -> list[str]:
    lines = []
    rss = max(m.rss_kib for m in mk_rows)
    verdict = "PASS" if _mb(rss) < RSS_TARGET_MB else "FAIL"
    lines.append(f"{verdict}  mk peak RSS {_mb(rss):.1f} MB (target < {RSS_TARGET_MB:.0f} MB)")
    for m in mk_rows:
        base, target = baselines.get(m.name), TARGETS.get(m.name)
        if m.action and base is not None and target is not None:
            ratio = base.wall / m.action  # throughput over the same tree
            verdict = "PASS" if ratio >= target else "FAIL"
            lines.append(f"{verdict}  {m.name} writer throughput {ratio:.2f}x {base.name} (target >= {target}x; "
                         f"whole command {base.wall / m.wall:.2f}x)")
    return lines


# ---- main ----------------------------------------------------------------------------------


def _default_mk() -> str:
    venv = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "mk"
    if venv.exists():
        return str(venv)
    found = shutil.which("mk")
    if found is None:
        raise BenchError("no mk executable found; pass --mk")
    return found


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text}") from None
    if 3 not in levels:
        raise argparse.ArgumentTypeError("the levels must include 3 (the comparison target)")
    return levels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the generated tree (default 1024)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated tree (default 1)")
    parser.add_argument("--runs", type=int, default=1, help="runs per measurement; the fastest is shown")
    parser.add_argument("--gnu-zstd-levels", type=_levels, default=[3, 9],
                        help="extra single-threaded zstd levels for GNU tar | zstd (default 3,9); "
                             "-T0 -3, mk's setting, always runs")
    parser.add_argument("--mk", default=None, help="mk executable (default: the repository's .venv)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="parent of the temporary work directory (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per command, in seconds")
    args = parser.parse_args(argv)
    if args.size_mib < 8 or args.runs < 1:
        parser.error("--size-mib must be at least 8 and --runs at least 1")
    for tool in ("tar", "zstd"):
        if shutil.which(tool) is None:
            parser.error(f"'{tool}' is not on PATH")

    def log(message: str) -> None:
        print(f"[archives] {message}", file=sys.stderr, flush=True)

    mk_exe = args.mk or _default_mk()
    parent = args.work_dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    # Peak disk use: tree, plain tar (mk's input), the CAS copy of the tree, the Layer action's
    # copy of its input, and an archive in scratch + CAS + mk-out: about 6x the tree size.
    need = 7 * args.size_mib * MiB
    free = shutil.disk_usage(parent).free
    if free < need:
        raise BenchError(f"{parent} has {free / MiB:.0f} MiB free; this run needs about {need / MiB:.0f} MiB "
                         "(use --work-dir or a smaller --size-mib)")
    work = Path(tempfile.mkdtemp(prefix="mk-bench-archives-", dir=parent))
    try:
        log(f"work directory {work}")
        started = time.perf_counter()
        stats = generate_tree(work / TREE_DIR, args.size_mib, args.seed)
        log(f"generated {stats.files} files ({stats.large_files} large) in {stats.dirs} folders, "
            f"{stats.file_bytes / MiB:.0f} MiB, in {time.perf_counter() - started:.1f} s")

        ws = work / "ws"
        (ws / PACKAGE).mkdir(parents=True)
        (ws / "mk.toml").write_text("")
        (ws / PACKAGE / "BUILD").write_text(BUILD_FILE)
        gnu_tar(work, ws / PACKAGE / "big.tar", args.timeout)  # mk's input, and a warm-up of the page cache
        mk = Mk(mk_exe, ws, work / "cache", work, args.timeout)
        wall, rss, _ = mk.build("big")
        setup = Measurement("mk layer import (setup)", wall, rss, 0)
        log(f"mk imported the tree in {wall:.2f} s (peak RSS {_mb(rss):.0f} MB)")
        (ws / "mk-out" / PACKAGE / "big.tree").unlink(missing_ok=True)
        mk.snapshot()

        # Each run measures every case once, GNU's and mk's one after the other, so that load from
        # elsewhere on the machine, which comes and goes, weighs on both sides alike.
        zstd_cases = sorted({(3, 0), *((level, 1) for level in args.gnu_zstd_levels)})
        gnu_runs: dict[str, list[Measurement]] = {}
        mk_runs: dict[str, list[Measurement]] = {}
        for _ in range(args.runs):
            measured = [gnu_tar(work, work / "gnu.tar", args.timeout)]
            (work / "gnu.tar").unlink()
            for level, threads in zstd_cases:
                out = work / f"gnu-{level}-{threads}.tar.zst"
                measured.append(gnu_tar_zstd(work, out, level, threads, args.timeout))
                out.unlink()
            for m in measured:
                gnu_runs.setdefault(m.name, []).append(m)
                log(f"{m.name}: {m.wall:.2f} s")
            for target, mnemonic, output, name in MK_CASES:
                m = mk.writer(target, mnemonic, output, name)
                mk_runs.setdefault(name, []).append(m)
                log(f"{name}: action {m.action:.2f} s, wall {m.wall:.2f} s")
        mk.restore()
        gnu_rows = [_best(runs) for runs in gnu_runs.values()]
        mk_rows = [_best(runs) for runs in mk_runs.values()]

        by_name = {m.name: m for m in gnu_rows}
        baselines = {"mk tar (none)": by_name["GNU tar (plain)"], "mk cpio (zstd)": by_name[BASELINE]}
        print(f"tree: {stats.files} files ({stats.large_files} large), {stats.dirs} folders, "
              f"{stats.file_bytes / MiB:.0f} MiB of file data (seed {args.seed}); runs per case: {args.runs}")
        print("throughput = tree file MiB / time; GNU rows have no separate action time; "
              "mk cpio uses zstd level 3 on every core")
        print()
        print(table([*gnu_rows, *mk_rows, setup], baselines, stats.file_bytes))
        print()
        print(f"vs GNU: mk tar (none) against GNU tar (plain); mk cpio (zstd) against {BASELINE}")
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        for line in check_targets(mk_rows, baselines):
            print(line)
        return 0
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"archives: {e}", file=sys.stderr)
        sys.exit(1)
