#!/usr/bin/env python3
"""What isolating a service costs at boot: the seconds from `mk run` to the first answer of the web
server of //examples:container_host (busybox httpd in a crun container, from an OCI image mk
builds), against the same image with the same httpd serving the same page as a plain process
(a `services` entry: root, no container). Both boot under TCG; runs alternate between the two.

Needs the Debian mirror once (for the packages) and QEMU.
Usage: python3 bench/services.py [--runs N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from debs import mk_exe, run

REPO = Path(__file__).resolve().parent.parent
ISOLATED = "//examples:container_host"
PLAIN = "//peer:plain_host"
PAGE = b"Hello from a container built by mk"
TIMEOUT = 600.0
# The container host with its web server as a plain process: the same packages, page, boot steps
# and other services; only the web server's isolation differs.
PEER = """
image(
    name = "plain_host",
    kernel = "//examples:kernel",
    base = ["//examples:container_host_packages", "//examples:sshd_settings", "//examples:container_host_accounts"],
    files = {"/srv/www/index.html": "//examples:www/index.html"},
    onboot = [
        "ssh-keygen -q -N '' -t ed25519 -f /etc/ssh/ssh_host_ed25519_key",
        "mkdir -p /run/sshd && chmod 0755 /run/sshd",
        "sysctl -w net.ipv4.ip_unprivileged_port_start=80",
    ],
    services = ["/usr/sbin/sshd -D -e", "/usr/bin/busybox httpd -f -v -p 80 -h /srv/www"],
    containers = ["//examples:clock"],
    ssh_key_user = "root",
)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="boots of each image; the median is shown")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mk-bench-services-"))
    try:
        return bench(work, args.runs)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def boot_to_answer(target: str, ws: Path, env: dict[str, str]) -> float:
    """Seconds from starting `mk run TARGET` (already built) to the page served on its port 80."""
    port = free_port()
    start = time.perf_counter()
    vm = subprocess.Popen([mk_exe(), "run", target, "--accel", "tcg", "--publish", f"{port}:80"], cwd=ws, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        while time.perf_counter() - start < TIMEOUT:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                    if PAGE in answer.read():
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{target} did not serve its page within {TIMEOUT:.0f} s")
    finally:
        os.killpg(vm.pid, signal.SIGTERM)
        vm.wait(timeout=30)


def bench(work: Path, runs: int) -> int:
    ws = work / "ws"
    ws.mkdir()
    shutil.copy(REPO / "mk.toml", ws / "mk.toml")
    shutil.copytree(REPO / "examples", ws / "examples", ignore=shutil.ignore_patterns("mk-out"))
    (ws / "peer").mkdir()
    (ws / "peer/BUILD").write_text(PEER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    print("building both images (the Debian mirror, the first time)...", file=sys.stderr)
    for target in (ISOLATED, PLAIN):
        run([mk_exe(), "image", target], ws, env)
    times: dict[str, list[float]] = {ISOLATED: [], PLAIN: []}
    for _ in range(runs):
        for target in times:
            times[target].append(boot_to_answer(target, ws, env))
    isolated, plain = statistics.median(times[ISOLATED]), statistics.median(times[PLAIN])
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'boot to the page served (TCG)':34} {'median s':>9} {'runs':>30}")
    for target, seconds in times.items():
        print(f"{target:34} {statistics.median(seconds):9.1f} {' '.join(f'{s:.1f}' for s in seconds):>30}")
    print(f"isolated / plain: {isolated / plain:.2f}x ({isolated - plain:+.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
