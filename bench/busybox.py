#!/usr/bin/env python3
"""busybox from source: what building //examples:busybox_from_source costs under mk, cold and
cached, and its compile in mk's sandbox against the same compile run directly on the host.

In a temporary copy of the examples (mk.toml and examples/), with a fresh MK_CACHE_DIR:

1. cold: `mk build -j 2 //examples:busybox_from_source` with an empty cache: the build toolchain
   (92 .debs) and busybox's source package downloaded, unpacked, the source unpacked by
   dpkg-source, busybox configured and compiled. The Package action's own time is read from
   --json-events;
2. cached: the same command again (a no-op: every result cached);
3. compile, --runs times, taking turns:
   - mk: the package's key changed by one more `env` entry (BENCH_RUN=i) in its BUILD target, so
     only its Package action runs again (sandboxed, on the written-out build toolchain); its time
     from --json-events;
   - host: the same steps (copy the unpacked source, `make allnoconfig`, the config merged,
     `make oldconfig`, `make -j2 busybox`, install) run by bash on this machine's own gcc and make
     (Debian 12's, as the toolchain's), from the same written-out source tree.
   Medians are reported, and mk's over the host's.

    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python bench/busybox.py            # --runs 3
    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python bench/busybox.py --runs 5 --keep

Needs the Debian mirror (as `mk lock` finds it), bubblewrap, and gcc and make on the host.
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

REPO = Path(__file__).resolve().parent.parent
MK = str(Path(sys.executable).parent / "mk")
TARGET = "//examples:busybox_from_source"
HOST_SCRIPT = """set -e -o pipefail
cp -R "$SOURCE/." "$BUILD_DIR/"
chmod -R u+w "$BUILD_DIR"
cd "$BUILD_DIR"
make allnoconfig
cat "$CONFIG" .config > .config.merged
mv .config.merged .config
make oldconfig < <(yes '')
make -j2 busybox
install -D -m 0755 busybox "$DESTDIR/usr/bin/busybox"
"""


def mk_build(workspace: Path, env: dict[str, str], events: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run([MK, "build", "-j", "2", "--json-events", str(events), TARGET], cwd=workspace, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"mk build failed:\n{result.stderr[-3000:]}")
    return seconds


def package_seconds(events: Path) -> float | None:
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event["mnemonic"] == "Package" and event["status"] == "executed":
            return float(event["duration"])
    return None


def written_out_source(cache: Path) -> Path:
    """The folder the sandbox bound as the unpacked source: the one tree (not a toolchain) this
    build wrote out, once per digest."""
    (folder,) = (cache / "toolchains").glob("*-tree")
    return folder


def host_compile(source: Path, config: Path, scratch: Path) -> float:
    for folder in ("build", "dest"):
        shutil.rmtree(scratch / folder, ignore_errors=True)
        (scratch / folder).mkdir()
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": str(scratch), "SOURCE_DATE_EPOCH": "0",
           "SOURCE": str(source), "CONFIG": str(config), "BUILD_DIR": str(scratch / "build"),
           "DESTDIR": str(scratch / "dest")}
    started = time.perf_counter()
    subprocess.run(["bash", "-c", HOST_SCRIPT], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the temporary workspace and cache")
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="mk-bench-busybox-"))
    workspace, cache = top / "ws", top / "cache"
    workspace.mkdir()
    shutil.copy(REPO / "mk.toml", workspace / "mk.toml")
    shutil.copytree(REPO / "examples", workspace / "examples", ignore=shutil.ignore_patterns("mk-out"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MK_") or k.startswith("MK_DEBIAN")}
    env["MK_CACHE_DIR"] = str(cache)
    env["MK_SERVER"] = "0"  # in process, so that the compile's time is the action's alone
    print(f"load average at the start: {os.getloadavg()[0]:.2f}", flush=True)
    cold = mk_build(workspace, env, top / "cold.jsonl")
    cold_package = package_seconds(top / "cold.jsonl")
    cached = mk_build(workspace, env, top / "cached.jsonl")
    assert package_seconds(top / "cached.jsonl") is None, "the cached build ran the package again"
    build_file = workspace / "examples/BUILD"
    original = build_file.read_text()
    source = written_out_source(cache)
    mk_runs, host_runs = [], []
    for run in range(args.runs):
        build_file.write_text(original.replace('    toolchain = ":build_toolchain",\n)\n\nimage(',
                                               f'    toolchain = ":build_toolchain",\n    env = {{"BENCH_RUN": '
                                               f'"{run}"}},\n)\n\nimage(', 1))
        mk_build(workspace, env, top / f"run{run}.jsonl")
        seconds = package_seconds(top / f"run{run}.jsonl")
        assert seconds is not None, "the edited package did not run again"
        mk_runs.append(seconds)
        host_runs.append(host_compile(source, workspace / "examples/busybox.config", top))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}\n")
    print(f"cold build (downloads, unpacking, dpkg-source, compile)  {cold:8.2f} s  "
          f"(its Package action {cold_package or 0:.2f} s)")
    print(f"cached build (no-op)                                     {cached:8.2f} s")
    mk_median, host_median = statistics.median(mk_runs), statistics.median(host_runs)
    print(f"compile, mk sandbox (median of {args.runs})                    {mk_median:8.2f} s  "
          f"[{', '.join(f'{s:.2f}' for s in mk_runs)}]")
    print(f"compile, host bash  (median of {args.runs})                    {host_median:8.2f} s  "
          f"[{', '.join(f'{s:.2f}' for s in host_runs)}]")
    print(f"mk / host                                                {mk_median / host_median:8.2f}x")
    if args.keep:
        print(f"kept {top}")
    else:
        for folder, _, _ in os.walk(top):  # written-out trees are read-only
            os.chmod(folder, 0o755)
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
