#!/usr/bin/env python3
"""Remote cache benchmark: a build from an empty local cache with a warm remote on loopback,
against a cold build, in the same run.

In a temporary copy of the workspace (mk.toml + examples/), with `mk cache serve` on 127.0.0.1
(or, with `--cache buildgrid`, a REAPI ActionCache and CAS: BuildGrid, as scripts/buildgrid.py runs it):

1. cold:         the target from an empty local cache, no remote (median of --runs);
2. warm-up:      the target from an empty local cache, uploading and signing (fills the remote;
                 timed once: the cost of uploading on a CI machine);
3. remote-hit:   the target from an empty local cache, reading the remote (median of --runs);
                 must execute 0 actions and place the same bytes as the cold build;
4. no-op after:  the same machine again, which finds everything without the network;
5. final image:  only --image from an empty local cache (median of --runs): what a machine that
                 wants just the image downloads; the target is < 2 s and exactly the image's own
                 output blobs.

The examples are small (a cold build takes a fraction of a second), so the ratio for them is
mostly process start-up. To show what a remote hit saves when actions do real work, the same
cold / remote-hit pair is also measured on `//slow`, --slow genrules that each sleep
--slow-seconds (0 turns it off).

Bytes transferred are measured exactly: the blobs that land in the (initially empty) local
cache, plus the signed action results fetched (their sizes on the server; not counted with
BuildGrid, whose store is not files). mk's own report line (`mk: remote cache ...`) is printed
for the last run of each phase.

    .venv/bin/python bench/remote.py
    .venv/bin/python bench/remote.py --target //examples --image //examples:initramfs --runs 5
    .venv/bin/python bench/remote.py --cache buildgrid
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE_TARGET_SECONDS = 2.0
_SUMMARY = re.compile(
    r"^mk: (\d+) targets, (\d+) actions: (\d+) executed, (\d+) cached \((\d+) local, (\d+) remote\) in ([\d.]+) s$",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Run:
    seconds: float
    actions: int
    executed: int
    remote: int
    blob_count: int  # blobs in the local cache afterwards
    blob_bytes: int
    result_bytes: int  # signed results fetched from the remote (0 when none were asked for)
    report: str


def _mk() -> str:
    sibling = Path(sys.executable).parent / "mk"
    found = str(sibling) if sibling.is_file() else shutil.which("mk")
    if not found:
        sys.exit("bench/remote.py: cannot find the mk console script (run it with .venv/bin/python)")
    return found


def _tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")] if root.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


class Bench:
    def __init__(self, work: Path, url: str, store: Path | None, runs: int) -> None:
        self.mk = _mk()
        self.work = work
        self.ws = work / "ws"
        self.url = url
        self.store = store
        self.runs = runs
        self.counter = 0
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("MK_")}
        self.base_env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as in an installed copy

    def fresh_cache(self) -> Path:
        self.counter += 1
        return self.work / f"cache-{self.counter}"

    def build(self, target: str, cache: Path, env: dict[str, str]) -> Run:
        full = {**self.base_env, "MK_CACHE_DIR": str(cache), "MK_SERVER": "0", **env}  # in process: caches are swapped
        events = self.work / "events.jsonl"
        started = time.perf_counter()
        proc = subprocess.run([self.mk, "build", target, "--json-events", str(events)], cwd=self.ws, env=full,
                              capture_output=True, text=True, timeout=3600, check=False)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"bench/remote.py: mk build {target} failed:\n{proc.stdout}\n{proc.stderr}")
        match = _SUMMARY.search(proc.stdout)
        assert match, proc.stdout
        blob_count, blob_bytes = _tree_size(cache / "cas")
        # Results fetched over the network: the remote hits, unless remembered from an earlier build.
        fetched = [e["key"] for e in map(json.loads, events.read_text().splitlines()) if e["origin"] == "remote"]
        result_bytes = 0 if "hits" not in proc.stderr or self.store is None else sum(
            (self.store / "ac" / key[:2] / key).stat().st_size for key in fetched)
        report = next((line for line in proc.stderr.splitlines() if line.startswith("mk: remote cache")), "")
        if "warning" in proc.stderr:
            print(proc.stderr, file=sys.stderr)
        return Run(seconds, int(match[2]), int(match[3]), int(match[6]), blob_count, blob_bytes, result_bytes,
                   report)

    def outputs(self) -> dict[str, bytes]:
        """The files placed under mk-out, less mk's record of what it placed there."""
        from mk.engine.placed import RECORD

        root = self.ws / "mk-out"
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != RECORD}

    def clean(self) -> None:
        shutil.rmtree(self.ws / "mk-out", ignore_errors=True)


def _median(runs: Sequence[Run]) -> float:
    return statistics.median(r.seconds for r in runs)


def _human(size: int) -> str:
    return f"{size} B" if size < 1024 else f"{size / 1024:.1f} KiB" if size < 1 << 20 else f"{size / (1 << 20):.1f} MiB"


def _row(name: str, runs: Sequence[Run], bytes_down: bool = True) -> str:
    last = runs[-1]
    down = f"{last.blob_count:>5}  {_human(last.blob_bytes + last.result_bytes):>10}"
    if not bytes_down:
        down = f"{'-':>5}  {'-':>10}"
    return (f"{name:<28} {_median(runs):>7.3f} s  {min(r.seconds for r in runs):>7.3f} s  {last.executed:>4}  "
            f"{last.remote:>6}  {down}")


@contextlib.contextmanager
def _served(work: Path) -> Iterator[tuple[str, Path | None]]:
    """`mk cache serve` on loopback: its URL and its store folder."""
    store = work / "store"
    server = subprocess.Popen([_mk(), "cache", "serve", str(store), "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        found = re.search(r"(http://\S+)/ ", line)
        if not found:
            sys.exit(f"bench/remote.py: mk cache serve did not start: {line}")
        yield found[1], store
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


@contextlib.contextmanager
def _buildgrid() -> Iterator[tuple[str, Path | None]]:
    """BuildGrid (with its PostgreSQL) on loopback, as scripts/buildgrid.py runs it; no store folder."""
    sys.path.insert(0, str(REPO / "scripts"))
    import buildgrid

    try:
        with buildgrid.running() as grid:
            yield grid.url, None
    except buildgrid.BuildGridUnavailable as e:
        sys.exit(f"bench/remote.py: {e}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="//examples", help="what to build (default: //examples)")
    parser.add_argument("--image", default="//examples:initramfs", help="the final image (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="runs per timed phase (median is shown)")
    parser.add_argument("--keep", action="store_true", help="leave the temporary directory in place")
    parser.add_argument("--slow", type=int, default=16, help="genrules in the synthetic //slow package")
    parser.add_argument("--slow-seconds", type=float, default=0.25, help="how long each of them sleeps")
    parser.add_argument("--cache", choices=("serve", "buildgrid"), default="serve",
                        help="the remote: `mk cache serve` (HTTP) or BuildGrid (REAPI over gRPC)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mk-bench-remote-"))
    stack = contextlib.ExitStack()
    try:
        (work / "ws").mkdir()
        shutil.copy(REPO / "mk.toml", work / "ws" / "mk.toml")
        shutil.copytree(REPO / "examples", work / "ws" / "examples")
        if args.slow:
            rules = "".join(f'genrule(name = "s{i}", outs = ["s{i}.txt"], cmd = "sleep {args.slow_seconds}; '
                            f'echo {i} > $@")\n' for i in range(args.slow))
            srcs = ", ".join(f'":s{i}"' for i in range(args.slow))
            (work / "ws" / "slow").mkdir()
            (work / "ws" / "slow" / "BUILD").write_text(f'{rules}filegroup(name = "slow", srcs = [{srcs}])\n')
        mk = _mk()
        subprocess.run([mk, "cache", "keygen", str(work / "ci")], check=True, capture_output=True)
        url, store = stack.enter_context(_served(work) if args.cache == "serve" else _buildgrid())
        public = (work / "ci.pub").read_text().strip()
        reader = {"MK_REMOTE_CACHE": url, "MK_TRUSTED_KEYS": public}
        writer = {**reader, "MK_SIGNING_KEY": str(work / "ci.key")}
        bench = Bench(work, url, store, args.runs)

        cold = []
        for _ in range(args.runs):
            bench.clean()
            cold.append(bench.build(args.target, bench.fresh_cache(), {}))
        reference = bench.outputs()

        bench.clean()
        warmup = [bench.build(args.target, bench.fresh_cache(), writer)]
        hits, caches = [], []
        for _ in range(args.runs):
            bench.clean()
            caches.append(bench.fresh_cache())
            hits.append(bench.build(args.target, caches[-1], reader))
            if bench.outputs() != reference:
                sys.exit("bench/remote.py: the remote-hit build placed different bytes from the cold build")
        noop = [bench.build(args.target, caches[-1], reader) for _ in range(args.runs)]

        image = []
        for _ in range(args.runs):
            bench.clean()
            image.append(bench.build(args.image, bench.fresh_cache(), reader))
        image_outputs = bench.outputs()

        slow_cold: list[Run] = []
        slow_hits: list[Run] = []
        if args.slow:
            for _ in range(args.runs):
                bench.clean()
                slow_cold.append(bench.build("//slow", bench.fresh_cache(), {}))
            bench.clean()
            bench.build("//slow", bench.fresh_cache(), writer)
            for _ in range(args.runs):
                bench.clean()
                slow_hits.append(bench.build("//slow", bench.fresh_cache(), reader))

        remote = "mk cache serve (HTTP)" if args.cache == "serve" else "BuildGrid (REAPI over gRPC)"
        print(f"target {args.target} ({cold[-1].actions} actions), image {args.image}; remote: {remote} on "
              f"loopback; {args.runs} runs per phase\n")
        print(f"{'phase':<28} {'median':>9}  {'min':>9}  {'exec':>4}  {'remote':>6}  {'blobs':>5}  {'bytes down':>10}")
        print(_row("cold (no remote)", cold, bytes_down=False))
        print(_row("warm-up (cold + upload)", warmup, bytes_down=False))
        print(_row("remote-hit, empty cache", hits))
        print(_row("no-op after remote-hit", noop, bytes_down=False))
        print(_row("final image only", image))
        if args.slow:
            print(_row(f"//slow cold ({args.slow} x {args.slow_seconds} s)", slow_cold, bytes_down=False))
            print(_row("//slow remote-hit", slow_hits))
        print()
        print(f"{args.target} remote-hit vs cold: {_median(cold) / _median(hits):.2f}x "
              f"({_median(hits):.3f} s vs {_median(cold):.3f} s)")
        if args.slow:
            print(f"//slow remote-hit vs cold: {_median(slow_cold) / _median(slow_hits):.2f}x "
                  f"({_median(slow_hits):.3f} s vs {_median(slow_cold):.3f} s)")
        print(f"uploaded by the warm-up: {warmup[-1].report.split('uploaded ', 1)[-1]}")
        print(f"mk's report, remote-hit: {hits[-1].report}")
        print(f"mk's report, final image: {image[-1].report}")

        ok = True
        image_bytes = sum(len(b) for b in image_outputs.values())
        own = image[-1].blob_count == len(image_outputs)
        checks = [
            (all(r.executed == 0 and r.remote == r.actions for r in hits), "remote-hit builds executed 0 actions"),
            (_median(image) < IMAGE_TARGET_SECONDS,
             f"final image from the remote in {_median(image):.3f} s (target < {IMAGE_TARGET_SECONDS:.0f} s)"),
            (own, f"final image downloaded {image[-1].blob_count} blobs for its {len(image_outputs)} outputs "
                  f"({_human(image[-1].blob_bytes)} compressed, {_human(image_bytes)} placed)"),
        ]
        for passed, text in checks:
            print(f"{'PASS' if passed else 'FAIL'}  {text}")
            ok = ok and passed
        return 0 if ok else 1
    finally:
        stack.close()  # the server
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
