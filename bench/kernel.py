#!/usr/bin/env python3
"""//examples:custom_kernel (Linux 6.1 from Debian's linux-source-6.1, tinyconfig and the fragments
in examples/kernel/) built by mk, against the very same commands run straight on the host.

In a temporary copy of the workspace (mk.toml + examples/), with every package already in the
content store and in the remote (`mk cache serve` on loopback), and the kernel toolchain already
written out for sandboxes (both timed apart: a host build has its compilers installed):

1. host, before:   kernel_build's own two scripts (olddefconfig, then the compile) run with bash on
                   the host's tools, same -j, no sandbox and no mk: the same steps, with the paths
                   of the sandbox made folders of the work directory. Needs the host's gcc, make,
                   bc, bison, flex, libelf-dev, libssl-dev, kmod and cpio (apt-get install
                   build-essential bc bison flex libelf-dev libssl-dev kmod cpio);
2. mk cold:        `mk build -j JOBS //examples:custom_kernel` from an empty action cache, uploading
                   to the remote (in the background); per-action times from --json-events;
3. host, after:    step 1 again: the two host runs around mk's show how much the machine's other
                   work moved the figures;
4. config change:  a fragment edit that olddefconfig drops (the config is the same: nothing is
                   compiled), then one that changes the config: `mk image //examples:sshd_custom_kernel`
                   after each, the time to the image;
5. remote:         from an empty local cache reading the remote: the kernel, then the image (--runs,
                   median); both must execute 0 actions;
6. store (--store-source): what keeping the source as a tree in the content store would cost:
                   importing the tarball into a store, and writing the tree out again, against tar -xf.

Wall time moves with whatever else runs on the machine; CPU time (user + system of every process a
run starts, sandboxed ones included, from a cgroup of its own) hardly does. Both are printed, with
the 1-minute load average before and after each phase.

    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python bench/kernel.py [--jobs 2] [--runs 3] [--store-source] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mk.cache.cas import ContentStore, digest_file  # noqa: E402  (the repository's own mk, whichever venv runs this)
from mk.cache.local import LocalCache  # noqa: E402
from mk.cache.toolchains import Toolchains  # noqa: E402
from mk.cache.tree import Kind, Tree  # noqa: E402
from mk.engine.actions import Artifact  # noqa: E402
from mk.engine.labels import Label  # noqa: E402
from mk.engine.sandbox import EXECROOT  # noqa: E402
from mk.engine.session import Session  # noqa: E402
from mk.rules.families import registry  # noqa: E402
from mk.rules.kernel_build import BUILD_DIR, TOOL_PATH, build_timestamp, compile_script, config_script  # noqa: E402
from mk.rules.kernel_config import merged, parse_fragment  # noqa: E402
from mk.rules.tarball import import_tar  # noqa: E402

KERNEL, IMAGE = "//examples:custom_kernel", "//examples:sshd_custom_kernel"
PREFILL = ("//examples:kernel_source", "//examples:kernel_toolchain", "//examples:sshd_packages",
           "//examples:sshd_settings", "//examples:image_tools")
HOST_TOOLS = ("gcc", "make", "bc", "bison", "flex", "cpio", "depmod")
INSTALL_DIR = "/tmp/install"  # where the compile script installs the kernel and its modules


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def _cgroup_root() -> Path | None:
    """The cgroup v2 hierarchy (alone, or beside v1 as `unified`), where this benchmark may make a
    group of its own to count the CPU time of everything a run starts, sandboxed processes included."""
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (root / "cgroup.procs").is_file() and (root / "cgroup.stat").is_file() and os.access(root, os.W_OK):
            return root
    return None


def measured(command: Sequence[str], **kwargs: object) -> tuple[subprocess.CompletedProcess[str], float, float | None]:
    """Runs `command`: (its result, wall seconds, CPU seconds of it and all it started, or None where no
    cgroup can be made). The CPU time hardly moves when other work shares the machine; wall time does."""
    root = _cgroup_root()
    group = None
    if root is not None:
        group = root / f"mk-bench-kernel-{os.getpid()}-{time.monotonic_ns()}"
        group.mkdir()
    procs = str(group / "cgroup.procs") if group else None

    def enter() -> None:  # in the child, before it runs the command
        if procs is not None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

    started = time.perf_counter()
    try:
        result = subprocess.run(list(command), preexec_fn=enter, capture_output=True, text=True, check=False,
                                **kwargs)  # type: ignore[call-overload]
        seconds = time.perf_counter() - started
        cpu = None
        if group is not None:
            stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
            cpu = int(stat["usage_usec"]) / 1e6
    finally:
        if group is not None:
            group.rmdir()
    return result, seconds, cpu


@dataclass
class Run:
    seconds: float
    cpu: float | None
    executed: int
    actions: int
    remote: int
    events: list[dict[str, object]]


class Workspace:
    def __init__(self, work: Path, jobs: int) -> None:
        self.work, self.jobs = work, jobs
        self.root = work / "ws"
        self.root.mkdir()
        shutil.copy(REPO / "mk.toml", self.root / "mk.toml")
        shutil.copytree(REPO / "examples", self.root / "examples", ignore=shutil.ignore_patterns("mk-out"))
        self.mk = str(REPO / ".venv" / "bin" / "mk")
        # In this process, not the resident server: a server's work would fall outside the cgroup
        # that counts each run's CPU time.
        self.base_env = {**{k: v for k, v in os.environ.items() if not k.startswith("MK_")}, "MK_SERVER": "0"}
        self.runs = 0

    def build(self, command: str, target: str, cache: Path, extra: dict[str, str] | None = None,
              more: Sequence[str] = ()) -> Run:
        self.runs += 1
        events = self.work / f"events-{self.runs}.jsonl"
        env = {**self.base_env, "MK_CACHE_DIR": str(cache), **(extra or {})}
        result, seconds, cpu = measured([self.mk, command, "-j", str(self.jobs), target, *more, "--json-events",
                                         str(events)], cwd=self.root, env=env)
        if result.returncode != 0:
            sys.exit(f"mk {command} {target} failed:\n{result.stderr[-4000:]}")
        summary = re.search(r"(\d+) actions: (\d+) executed, \d+ cached \(\d+ local, (\d+) remote\)",
                            result.stdout.splitlines()[-1])
        assert summary is not None, result.stdout
        parsed = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
        return Run(seconds, cpu, int(summary[2]), int(summary[1]), int(summary[3]), parsed)

    def edit(self, path: str, old: str, new: str) -> None:
        file = self.root / path
        text = file.read_text()
        file.write_text(text.replace(old, new, 1))
        when = time.time() - 10
        os.utime(file, (when, when))


def action_seconds(run: Run, mnemonic: str) -> float:
    return sum(float(str(e["duration"])) for e in run.events if e["mnemonic"] == mnemonic and e["status"] == "executed")


def host_versions() -> str:
    found = []
    for tool in ("gcc", "ld", "make"):
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False).stdout.splitlines()
        found.append(out[0] if out else f"{tool}: missing")
    return "; ".join(found)


def source_tarball(cache: Path, ws: Path) -> Path:
    """The linux-source tarball, out of the kernel_source tree (as kernel_build's KernelSource takes it)."""
    cas = ContentStore(cache)
    tree = Tree.decode((ws / "mk-out/examples/kernel_source.tree").read_bytes())
    (entry,) = [e for e in tree.entries if e.path.startswith("usr/src/linux-source-") and e.kind is Kind.FILE]
    out = ws.parent / "linux.tar.xz"
    with open(out, "wb") as f:
        cas.copy_to(entry.digest, f, entry.size)
    return out


def on_host(script: str, execroot: Path, scratch: Path, jobs: int) -> tuple[float, float | None]:
    """One of kernel_build's scripts run with the host's bash and tools, the sandbox's fixed paths
    (its /tmp and its execroot) made folders of `scratch`."""
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "tmp").mkdir(parents=True)
    script = script.replace(EXECROOT, str(execroot)).replace(BUILD_DIR, str(scratch / "tmp/linux")) \
        .replace(INSTALL_DIR, str(scratch / "tmp/install"))
    env = {"PATH": TOOL_PATH, "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": str(scratch / "tmp"),
           "TMPDIR": str(scratch / "tmp"), "MK_JOBS": str(jobs), "SOURCE_DATE_EPOCH": "0",
           "KBUILD_BUILD_TIMESTAMP": build_timestamp(0), "KBUILD_BUILD_USER": "mk", "KBUILD_BUILD_HOST": "mk",
           "KBUILD_BUILD_VERSION": "1"}
    result, seconds, cpu = measured(["bash", "-e", "-o", "pipefail", "-c", script], cwd=execroot, env=env)
    if result.returncode != 0:
        sys.exit(f"the script failed on the host:\n{result.stderr[-4000:]}")
    return seconds, cpu


Timed = tuple[float, float | None]  # wall seconds, CPU seconds (None: not measured)


@dataclass(frozen=True)
class HostBuild:
    config: Timed  # the olddefconfig script
    compile: Timed  # the compile script
    resolved: bytes  # the .config it resolved
    vmlinuz: bytes


def host_build(ws: Workspace, cache: Path, jobs: int, name: str) -> HostBuild:
    """kernel_build's two scripts, olddefconfig then the compile, run on the host."""
    execroot = ws.work / f"host-{name}"
    (execroot / "k").mkdir(parents=True)
    shutil.move(source_tarball(cache, ws.root), execroot / "k/linux.tar.xz")
    target = Session(registry(), ws.root).loader().target(Label.parse(KERNEL))
    assert target is not None
    fragments, base = target.attrs["fragments"], str(target.attrs["base"])
    assert isinstance(fragments, list)
    requests = [r for file in fragments for r in parse_fragment((ws.root / "examples" / file).read_text(), file)]
    (execroot / "k/fragments.config").write_text(merged(requests))
    tarball, fragment = Artifact("k/linux.tar.xz", False), Artifact("k/fragments.config", False)
    config, built = Artifact("k/k.config", False), Artifact("k/kernel.tar", False)
    configured = on_host(config_script(tarball, base, fragment, config), execroot, ws.work / "scratch", jobs)
    compiled = on_host(compile_script(tarball, config, built), execroot, ws.work / "scratch", jobs)
    shutil.rmtree(ws.work / "scratch")
    listing = subprocess.run(["tar", "-tf", str(execroot / built.path)], capture_output=True, text=True, check=True)
    (vmlinuz,) = [m for m in listing.stdout.split() if m.startswith("./boot/vmlinuz-")]
    image = subprocess.run(["tar", "-xOf", str(execroot / built.path), vmlinuz], capture_output=True, check=True)
    resolved = (execroot / config.path).read_bytes()
    shutil.rmtree(execroot)
    return HostBuild(configured, compiled, resolved, image.stdout)


def write_out_toolchain(ws: Workspace, cache: Path) -> float:
    """The kernel toolchain's tree written out for sandboxes, once per toolchain: timed apart, as a host
    build has its compilers installed already."""
    local = LocalCache(cache)
    started = time.perf_counter()
    Toolchains(local, local.cas).root_for(digest_file(ws.root / "mk-out/examples/kernel_toolchain.tree"))
    return time.perf_counter() - started


def store_source(ws: Workspace, cache: Path) -> tuple[float, int, float, float, int]:
    """The source as a tree in a content store: (import seconds, store bytes, write-out seconds,
    tar -xf seconds, files)."""
    tarball = source_tarball(cache, ws.root)
    store = ws.work / "source-store"
    started = time.perf_counter()
    with open(tarball, "rb") as f:
        tree = import_tar(f, ContentStore(store), "linux")
    imported = time.perf_counter() - started
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    cas, out = ContentStore(store), ws.work / "written-out"
    started = time.perf_counter()
    for entry in tree.entries:  # as the executor writes an input out: each file from the store
        target = out / entry.path
        if entry.kind is Kind.DIR:
            target.mkdir(parents=True, exist_ok=True)
        elif entry.kind is Kind.FILE:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                cas.copy_to(entry.digest, f, entry.size)
    written = time.perf_counter() - started
    untarred = ws.work / "untarred"
    untarred.mkdir()
    started = time.perf_counter()
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(untarred)], check=True)
    untar = time.perf_counter() - started
    return imported, size, written, untar, sum(1 for _ in tree.files())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="mk's -j and make's -j (default: 2)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each remote-cache phase (median shown)")
    parser.add_argument("--store-source", action="store_true", help="also measure the source kept as a tree")
    parser.add_argument("--keep", action="store_true", help="leave the temporary directory in place")
    args = parser.parse_args(argv)
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool, path=TOOL_PATH) is None]
    if missing:
        sys.exit(f"bench/kernel.py compares with a build on the host, which lacks {', '.join(missing)}: apt-get "
                 "install build-essential bc bison flex libelf-dev libssl-dev kmod cpio")
    work = Path(tempfile.mkdtemp(prefix="mk-bench-kernel-"))
    server: subprocess.Popen[str] | None = None
    try:
        ws = Workspace(work, args.jobs)
        subprocess.run([ws.mk, "cache", "keygen", str(work / "ci")], check=True, capture_output=True)
        server = subprocess.Popen([ws.mk, "cache", "serve", str(work / "store"), "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert server.stdout is not None
        found = re.search(r"(http://\S+)/ ", server.stdout.readline())
        if not found:
            sys.exit("bench/kernel.py: mk cache serve did not start")
        reader = {"MK_REMOTE_CACHE": found[1], "MK_TRUSTED_KEYS": (work / "ci.pub").read_text().strip()}
        writer = {**reader, "MK_SIGNING_KEY": str(work / "ci.key")}
        cache = work / "cache"
        print(f"filling the content store and the remote with the packages (network, not timed); load {load()}",
              file=sys.stderr)
        ws.build("build", PREFILL[0], cache, writer, more=PREFILL[1:])
        toolchain_seconds = write_out_toolchain(ws, cache)

        # The host's build before and after mk's: other work on the machine shows as a difference.
        print(f"1. the scripts on the host, load {load()}", file=sys.stderr)
        host_loads = [load()]
        hosts = [host_build(ws, cache, args.jobs, "before")]
        print(f"2. mk cold, load {load()}", file=sys.stderr)
        mk_loads = [load()]
        cold = ws.build("build", KERNEL, cache, writer)
        mk_loads.append(load())
        print(f"3. the scripts on the host again, load {load()}", file=sys.stderr)
        hosts.append(host_build(ws, cache, args.jobs, "after"))
        host_loads.append(load())
        mk_config = (ws.root / "mk-out/examples/custom_kernel.config").read_bytes()
        mk_vmlinuz = (ws.root / "mk-out/examples/custom_kernel.vmlinuz").read_bytes()
        same_config = all(h.resolved == mk_config for h in hosts)
        same_kernel = all(h.vmlinuz == mk_vmlinuz for h in hosts)

        print(f"4. config changes, load {load()}", file=sys.stderr)
        ws.build("image", IMAGE, cache, writer)  # the image on the cold kernel, uploaded for phase 5 (not timed)
        ws.edit("examples/kernel/net.config", "CONFIG_NET=y\n", "CONFIG_NET=y\nCONFIG_E1000=y\n")
        dropped = ws.build("image", IMAGE, cache)
        ws.edit("examples/kernel/base.config", "CONFIG_64BIT=y\n", 'CONFIG_64BIT=y\nCONFIG_LOCALVERSION="-bench"\n')
        changed = ws.build("image", IMAGE, cache)
        change_load = load()
        ws.edit("examples/kernel/base.config", 'CONFIG_LOCALVERSION="-bench"\n', "")
        ws.edit("examples/kernel/net.config", "CONFIG_E1000=y\n", "")

        print(f"5. remote, load {load()}", file=sys.stderr)
        remote_load = load()
        kernel_hits = [ws.build("build", KERNEL, work / f"empty-{i}", reader) for i in range(args.runs)]
        image_hits = [ws.build("image", IMAGE, work / f"empty-image-{i}", reader) for i in range(args.runs)]

        stored = store_source(ws, cache) if args.store_source else None

        compile_mk, config_mk = action_seconds(cold, "KernelCompile"), action_seconds(cold, "KernelConfig")
        host_wall = statistics.mean(h.config[0] + h.compile[0] for h in hosts)
        host_compile = statistics.mean(h.compile[0] for h in hosts)
        cpus = [h.config[1] + h.compile[1] for h in hosts if h.config[1] is not None and h.compile[1] is not None]
        host_cpu = statistics.mean(cpus) if len(cpus) == len(hosts) else None
        print(f"\n{KERNEL}, -j {args.jobs}, {os.cpu_count()} CPUs; host: {host_versions()}")
        print("CPU s: user + system time of every process the run started, sandboxed ones included (a cgroup's "
              "cpu.stat); it hardly moves with the machine's load, wall time does")
        print(f"{'phase':<62} {'wall s':>7} {'CPU s':>7} {'ran':>4}  load before/after")

        def row(name: str, wall: float, cpu: float | None = None, executed: int | None = None,
                loads: Sequence[str] = ()) -> None:
            print(f"{name:<62} {wall:7.1f} {'' if cpu is None else f'{cpu:7.1f}':>7} "
                  f"{'' if executed is None else executed:>4}  {'/'.join(loads)}")

        row("kernel toolchain written out for sandboxes (once)", toolchain_seconds)
        for name, host, loads in zip(("before", "after"), hosts, (host_loads[:1], host_loads[1:]), strict=True):
            row(f"host, {name} mk: olddefconfig script (unpack, tinyconfig, ...)", *host.config, None, loads)
            row(f"host, {name} mk: compile script (unpack, make, install, tar)", *host.compile)
        row(f"mk cold build of {KERNEL} ({cold.executed} actions ran)", cold.seconds, cold.cpu, cold.executed, mk_loads)
        for mnemonic in ("KernelSource", "KernelFragments", "KernelConfig", "KernelConfigCheck", "KernelCompile",
                         "KernelTree", "KernelModules"):
            row(f"  {mnemonic}", action_seconds(cold, mnemonic))
        row("image after an edit olddefconfig drops (nothing compiled)", dropped.seconds, dropped.cpu, dropped.executed)
        row("image rebuilt after a config change (compiled)", changed.seconds, changed.cpu, changed.executed,
            ("", change_load))
        row("kernel from the remote, empty local cache (median)", statistics.median(r.seconds for r in kernel_hits),
            None, max(r.executed for r in kernel_hits), (remote_load, load()))
        row("image from the remote, empty local cache (median)", statistics.median(r.seconds for r in image_hits),
            None, max(r.executed for r in image_hits))
        if stored is not None:
            imported, size, written, untar, files = stored
            row(f"source as a tree: into a store ({files} files, {size / 1e6:.0f} MB)", imported)
            row("source as a tree: written out of the store", written)
            row("source as the tarball: tar -xf", untar)
        print()
        print(f"compile, wall: mk's KernelCompile {compile_mk:.1f} s, the host's {host_compile:.1f} s (mean of 2): "
              f"{(compile_mk / host_compile - 1) * 100:+.1f}%")
        cpu_text = "not measured (no cgroup)" if cold.cpu is None or host_cpu is None else \
            f"{cold.cpu:.1f} s vs {host_cpu:.1f} s: {(cold.cpu / host_cpu - 1) * 100:+.1f}%"
        print(f"cold build against the host's two scripts: wall {cold.seconds:.1f} s vs {host_wall:.1f} s "
              f"(mean of 2): {(cold.seconds / host_wall - 1) * 100:+.1f}%; CPU {cpu_text}")
        same = f"the host's config {'is' if same_config else 'is NOT'} the one mk resolved, and its kernel " \
            f"{'is' if same_kernel else 'is NOT'} the same bytes (if the host's gcc and binutils are the toolchain's)"
        print(f"olddefconfig: mk's KernelConfig {config_mk:.1f} s; {same}")
        ok = all(r.executed == 0 for r in kernel_hits + image_hits) and action_seconds(dropped, "KernelCompile") == 0 \
            and action_seconds(changed, "KernelCompile") > 0
        print("PASS" if ok else "FAIL", "(the remote builds executed nothing; the dropped option compiled nothing; the "
              "changed config compiled)")
        return 0 if ok else 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
