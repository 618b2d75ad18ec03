#!/usr/bin/env python3
"""Remote execution benchmark: mk against a real BuildGrid server with `mk worker` processes, on loopback.

In a temporary workspace whose commands run on a locked toolchain (this machine's bash and
coreutils, packaged offline as the tests do), with BuildGrid and PostgreSQL started by
scripts/buildgrid.py:

1. sleep graph: --actions genrules that each `sleep 1` (CPU-free waiting), built
   - locally at -j 2;
   - remotely with 4 workers, then with 8 workers (each runs one lease at a time and holds one
     more ready, `--capacity 1 --prefetch 1`; -j 2, --remote-jobs 64).
   Target: at least 3.5x faster than local -j 2 with 8 workers.
2. per-action overhead: a chain of --chain trivial genrules (each reads the one before it, so
   they run one after another), locally and remotely; (remote - local) / chain is what
   remote execution adds to one action. Target: under 20 ms on loopback.

Each timed build starts from a copy of a seed cache holding the toolchain (fetched, unpacked,
merged: not what is measured), and its commands carry a fresh nonce, so neither mk's cache nor
BuildGrid's action cache answers them. Workers are warmed first by a remote build into the seed
cache (each worker has written the toolchain out once, and the seed knows the toolchain's
SHA-256s, as a cache that has built remotely before does). Medians of --runs; wall time of the
whole `mk build` process.

3. BuildGrid's floor: the chain again, answered by bench/floor_bot.py, a bot that completes
   each lease at once with a precomputed result (no command, no CAS traffic): what BuildGrid,
   PostgreSQL, the network and mk's client cost per action without any worker.

    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python bench/remote_exec.py
    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python bench/remote_exec.py --runs 3 --actions 64 --chain 32
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

import buildgrid  # noqa: E402  (scripts/buildgrid.py)
from test_sandbox import BUILD, host_tools_deb, publish  # noqa: E402  (the offline toolchain the tests use)

MK = str(Path(sys.executable).parent / "mk")


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MK_")}
    # In process: the caches are copied from a seed, which a server's socket would be part of.
    return {**env, "MK_CACHE_DIR": str(cache), "MK_SERVER": "0", **extra}


def _mk(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Seconds the `mk` process took, and its stderr."""
    started = time.perf_counter()
    done = subprocess.run([MK, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bench/remote_exec.py: mk {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return seconds, done.stderr


class Bench:
    def __init__(self, folder: Path, actions: int, chain: int) -> None:
        self.folder = folder
        self.actions = actions
        self.chain = chain
        self.ws = folder / "ws"
        self.seed = folder / "seed-cache"

    def prepare(self) -> None:
        repo = publish(self.folder / "repo", host_tools_deb("1.0", extra=("sleep",)))
        (self.ws / "tc").mkdir(parents=True)
        (self.ws / "tc" / "BUILD").write_text(BUILD.format(keyring=repo.keyring), encoding="utf-8")
        (self.ws / "mk.toml").write_text(f'toolchain = "//tc:tools"\ndebian_mirror = "{repo.url}"\n',
                                         encoding="utf-8")
        for command in ("lock", "build"):
            _mk([command, "//tc:tools"], self.ws, _env(self.seed))

    def graph(self, package: str, seconds: float, count: int, chained: bool) -> str:
        """A package of `count` genrules with a fresh nonce: nothing answers them from a cache."""
        nonce = uuid.uuid4().hex
        folder = self.ws / package
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (folder / "seed.txt").write_text(nonce + "\n", encoding="utf-8")
        rules = []
        for i in range(count):
            src = f'":a{i - 1}"' if chained and i else '"seed.txt"'
            sleep = f"sleep {seconds}; " if seconds else ""
            # The nonce in each command too: with the floor bot every output is empty.
            rules.append(f'genrule(name = "a{i}", srcs = [{src}], outs = ["a{i}.txt"], '
                         f'cmd = "{sleep}(cat $<; echo {i} {nonce}) > $@")')
        (folder / "BUILD").write_text("\n".join(rules) + "\n", encoding="utf-8")
        return f"//{package}:all"

    def build(self, target: str, executor: str | None, jobs: int = 2) -> float:
        return self.build_telling(target, executor, jobs)[0]

    def warm_up(self, url: str) -> None:
        """A remote build into the seed cache itself (untimed): each worker writes the toolchain
        out, and the seed learns the SHA-256 of each toolchain file, as any cache that has built
        remotely once knows them (mk hashes an unchanged blob once, not on every build)."""
        _mk(["build", self.graph("w", 0.5, 16, False), "-j", "2", "--remote-jobs", "64"], self.ws,
            _env(self.seed, MK_REMOTE_EXECUTOR=url))

    def build_telling(self, target: str, executor: str | None, jobs: int = 2) -> tuple[float, str]:
        """Seconds, and the remote executor's report line (where the time beyond the commands went)."""
        cache = self.folder / f"cache-{uuid.uuid4().hex[:8]}"
        shutil.copytree(self.seed, cache, symlinks=True)
        extra = {"MK_REMOTE_EXECUTOR": executor} if executor else {}
        try:
            seconds, err = _mk(["build", target, "-j", str(jobs), "--remote-jobs", "64"], self.ws, _env(cache, **extra))
            return seconds, next((line for line in err.splitlines() if line.startswith("mk: remote executor")), "")
        finally:
            shutil.rmtree(cache, ignore_errors=True)


@contextmanager
def _workers(url: str, folder: Path, count: int, start: int = 0, prefetch: int = 1) -> Iterator[None]:
    processes = []
    for i in range(start, start + count):
        cache = folder / f"worker{i}"
        cache.mkdir(exist_ok=True)
        log = open(folder / f"worker{i}.log", "wb")  # noqa: SIM115 (closed with the process)
        processes.append((subprocess.Popen([MK, "worker", "--remote", url, "--capacity", "1",
                                           "--prefetch", str(prefetch)], stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=_env(cache)), log))
    try:
        time.sleep(2)
        yield
    finally:
        for process, log in processes:
            process.terminate()
            process.wait(timeout=30)
            log.close()


@contextmanager
def _floor_bot(url: str, folder: Path, outputs: list[str]) -> Iterator[None]:
    """bench/floor_bot.py: a bot that answers every lease at once, without any work."""
    log = folder / "floor-bot.log"
    with open(log, "wb") as out:
        bot = subprocess.Popen([sys.executable, str(REPO / "bench" / "floor_bot.py"), url, *outputs], stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while "serving" not in log.read_text(encoding="utf-8", errors="replace"):
            if bot.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"bench/remote_exec.py: the floor bot did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield
    finally:
        bot.send_signal(signal.SIGINT)  # it closes its bot session
        try:
            bot.wait(timeout=10)
        except subprocess.TimeoutExpired:
            bot.kill()
            bot.wait()


def _median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--actions", type=int, default=64)
    parser.add_argument("--chain", type=int, default=32)
    args = parser.parse_args()
    print(f"bench/remote_exec.py: load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {os.cpu_count()} cores",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="mk-bench-remote-") as scratch, ExitStack() as stack:
        bench = Bench(Path(scratch), args.actions, args.chain)
        bench.prepare()
        grid = stack.enter_context(buildgrid.running())
        workers = Path(scratch) / "workers"
        workers.mkdir()
        local = [bench.build(bench.graph("s", 1, args.actions, False), None) for _ in range(args.runs)]
        print(f"sleep graph, local -j 2:     {_median(local):6.2f} s", flush=True)
        results = {}
        with _workers(grid.url, workers, 4):
            bench.warm_up(grid.url)
            results[4] = [bench.build(bench.graph("s", 1, args.actions, False), grid.url) for _ in range(args.runs)]
            print(f"sleep graph, 4 workers:      {_median(results[4]):6.2f} s "
                  f"({_median(local) / _median(results[4]):.2f}x local)", flush=True)
            with _workers(grid.url, workers, 4, start=4):
                bench.warm_up(grid.url)
                results[8] = [bench.build(bench.graph("s", 1, args.actions, False), grid.url)
                              for _ in range(args.runs)]
                print(f"sleep graph, 8 workers:      {_median(results[8]):6.2f} s "
                      f"({_median(local) / _median(results[8]):.2f}x local)", flush=True)
            chain_local = [bench.build(bench.graph("c", 0, args.chain, True), None, jobs=1) for _ in range(args.runs)]
            told = [bench.build_telling(bench.graph("c", 0, args.chain, True), grid.url, jobs=1)
                    for _ in range(args.runs)]
            chain_remote = [seconds for seconds, _ in told]
            for _, line in told:  # mk's own split of each remote action's time beyond its command
                print(f"  {line.partition('; per action ')[2] or line}", flush=True)
        # BuildGrid's own floor: the same chain, answered by a bot that does no work at all.
        with _floor_bot(grid.url, workers, [f"c/a{i}.txt" for i in range(args.chain)]):
            floor = [bench.build_telling(bench.graph("c", 0, args.chain, True), grid.url, jobs=1)
                     for _ in range(args.runs)]
        for _, line in floor:
            print(f"  floor bot: {line.partition('; per action ')[2] or line}", flush=True)
        floor_seconds = _median([seconds for seconds, _ in floor])
        overhead = (_median(chain_remote) - _median(chain_local)) / args.chain
        print(f"chain of {args.chain} trivial actions: local {_median(chain_local):.2f} s, "
              f"remote {_median(chain_remote):.2f} s: {overhead * 1000:.1f} ms more per action", flush=True)
        # The floor bot runs no command, the local chain runs each: BuildGrid alone costs at least this.
        print(f"the chain answered by the floor bot (no worker, no command): {floor_seconds:.2f} s: "
              f"{(floor_seconds - _median(chain_local)) / args.chain * 1000:.1f} ms more per action than local",
              flush=True)
        print(f"speed-up with 8 workers: {_median(local) / _median(results[8]):.2f}x (target >= 3.5x); "
              f"overhead {overhead * 1000:.1f} ms per action (target < 20 ms); load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
