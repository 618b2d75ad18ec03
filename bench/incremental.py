#!/usr/bin/env python3
"""//examples:sshd after a one-file edit, this checkout against another one (--baseline, a
checkout of mk, say `git worktree add --detach /tmp/base main`), edits alternating between the
two so load on the machine hits both alike.

Each side gets its own copy of the workspace (mk.toml and examples/) and the usual cache (the
action keys hold mk's code, so the two never share an action). Each edit appends a line never
seen before to examples/sshd_config, which goes into the image through //examples:sshd_settings,
then times `mk image //examples:sshd` and sums, from --json-events, the time of the actions it
executed: all of them, and those that make the initrd (`Initrd*`). Each side's builds go through
its workspace's build server, as `mk` does by default (the warm-up build starts it; the servers are
stopped at the end), or with --no-server each in a process of its own, as in CI.

Usage: python3 bench/incremental.py --baseline DIR [--edits N] [--no-server]
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
from typing import cast

REPO = Path(__file__).resolve().parent.parent
TARGET = "//examples:sshd"


def mk_command(checkout: Path, server: bool) -> list[str]:
    """The `mk` command from `checkout`'s sources, on this venv's libraries."""
    program = "import sys; from mk.client import main; sys.exit(main())"
    return ["env", f"PYTHONPATH={checkout}", sys.executable, "-c", program, *([] if server else ["--no-server"])]


def edit_and_build(mk: list[str], ws: Path, number: int) -> tuple[float, float, float, list[str]]:
    config = ws / "examples" / "sshd_config"
    config.write_text(config.read_text().split("# bench edit")[0] + f"# bench edit {number} {time.time_ns()}\n")
    events = ws / "events.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    started = time.perf_counter()
    result = subprocess.run([*mk, "image", TARGET, "--json-events", str(events)], cwd=ws, env=env,
                            capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"mk image {TARGET} failed in {ws}:\n{result.stderr[-3000:]}")
    ran = [e for line in events.read_text().splitlines() if (e := json.loads(line))["status"] == "executed"]
    actions = sum(float(e["duration"]) for e in ran)
    initrd = sum(float(e["duration"]) for e in ran if str(e["mnemonic"]).startswith("Initrd"))
    return wall, actions, initrd, sorted(f"{e['mnemonic']} {float(e['duration']) * 1000:.0f}ms" for e in ran)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of mk")
    parser.add_argument("--edits", type=int, default=5, help="edits per side; the median is shown")
    parser.add_argument("--no-server", dest="server", action="store_false",
                        help="build each edit in a process of its own (as CI does), not through the build server")
    args = parser.parse_args()
    sides = {"this checkout": REPO, "baseline": args.baseline.resolve()}
    # PYTHONPATH naming a folder without mk would quietly run this venv's mk: both sides the same.
    if not (sides["baseline"] / "mk" / "client.py").is_file():
        sys.exit(f"--baseline {args.baseline}: not a checkout of mk with a build client (no mk/client.py there)")
    work = Path(tempfile.mkdtemp(prefix="mk-bench-incremental-"))
    spaces: dict[str, Path] = {}
    try:
        for index, (name, checkout) in enumerate(sides.items()):
            ws = work / f"ws{index}"
            ws.mkdir()
            shutil.copy(REPO / "mk.toml", ws / "mk.toml")
            shutil.copytree(REPO / "examples", ws / "examples", ignore=shutil.ignore_patterns("mk-out"))
            spaces[name] = ws
            edit_and_build(mk_command(checkout, args.server), ws, -1)  # warm: all but the edit is cached after it
        results: dict[str, list[tuple[float, float, float, list[str]]]] = {name: [] for name in sides}
        for number in range(args.edits):
            for name, checkout in sides.items():
                results[name].append(edit_and_build(mk_command(checkout, args.server), spaces[name], number))
    finally:
        for name, checkout in sides.items():
            if name in spaces:
                subprocess.run([*mk_command(checkout, True), "shutdown"], cwd=spaces[name],
                               capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    how = "through the build server" if args.server else "--no-server"
    print(f"{TARGET}, one-file edit (examples/sshd_config), {how}; median of {args.edits} edits per side, "
          f"alternating; load {os.getloadavg()[0]:.1f}")
    print(f"{'side':16}{'mk image':>10}{'actions':>10}{'initrd':>10}  executed (last edit)")
    for name, runs in results.items():
        wall, actions, initrd = (statistics.median(cast(float, r[i]) for r in runs) * 1000 for i in range(3))
        print(f"{name:16}{wall:8.0f}ms{actions:8.0f}ms{initrd:8.0f}ms  {', '.join(runs[-1][3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
