"""//examples:custom_kernel, Linux compiled from Debian's linux-source-6.1 on the locked kernel
toolchain, and //examples:sshd_custom_kernel on it. The image boots under QEMU (TCG) and takes an ssh
login; the kernel is the same bytes when compiled again in another workspace, comes from a remote
cache with nothing executed, and a fragment edit rebuilds exactly what it must.

A kernel takes minutes to compile on CI's two cores, so every test starts from one cold build (the
`cold` fixture, which also uploads to a remote cache) and works in a copy of the examples that shares
its local cache: keys do not depend on the workspace's path, so only what a test changes runs again.
Three compiles in all: the cold one, the one `mk build --check` forces, and the changed config's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MIRROR_SECONDS, MK, mk_env, parse_summary, read_events, require, run_within, tail
from remote_servers import serve_process
from test_boot import POWER_OFF_SECONDS, SSH_SECONDS, TCG_BOOT_SECONDS, free_port, ssh, wait_for_banner

from mk.cache.tree import Tree
from mk.cli import EXIT_INTERRUPTED

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.mirror

# The longest a compile of the example kernel may take from a cold cache on CI's two cores (it takes
# about 5 minutes there), and one run of olddefconfig (about a minute: it unpacks the source first).
COMPILE_SECONDS = 1500
CONFIG_SECONDS = 300
KERNEL = "//examples:custom_kernel"
IMAGE = "//examples:sshd_custom_kernel"
MODULES_TREE = "mk-out/examples/custom_kernel.modules.tree"


@dataclass(frozen=True)
class Cold:
    """The cold build: its workspace, its local cache, the remote cache it uploaded to (signed)."""

    root: Path
    cache: Path
    remote: str
    public_key: str
    seconds: float


def copy_examples(root: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copy(REPO / "mk.toml", root / "mk.toml")
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("mk-out"))
    return root


def mk(root: Path, env: dict[str, str], seconds: float, what: str, *args: str,
       umask: int = -1) -> subprocess.CompletedProcess[str]:
    return run_within([MK, *args], seconds, f"`mk {' '.join(args)}` ({what})", cwd=root, env=env, umask=umask)


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cold]:
    base = tmp_path_factory.mktemp("custom-kernel")
    root = copy_examples(base / "a")
    subprocess.run([MK, "cache", "keygen", str(base / "ci")], check=True, capture_output=True)
    public_key = (base / "ci.pub").read_text().strip()
    with serve_process(base / "store") as remote:
        env = mk_env(base / "cache", {"MK_REMOTE_CACHE": remote.url, "MK_SIGNING_KEY": str(base / "ci.key"),
                                      "MK_TRUSTED_KEYS": public_key})
        started = time.monotonic()
        result = mk(root, env, MIRROR_SECONDS + COMPILE_SECONDS, "fetches the packages, compiles the kernel",
                    "image", "-j", "2", IMAGE)
        assert result.returncode == 0, tail(result.stderr, 60)
        yield Cold(root, base / "cache", remote.url, public_key, time.monotonic() - started)


def workspace_like(cold: Cold, root: Path) -> Path:
    """A copy of the examples at another path, whose build from the cold cache runs nothing."""
    copy_examples(root)
    result = mk(root, mk_env(cold.cache), MIRROR_SECONDS, "all cached", "image", IMAGE)
    assert result.returncode == 0, result.stderr
    assert parse_summary(result.stdout).executed == 0
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    when = time.time() - 10  # older than the stat cache's racy window
    os.utime(path, (when, when))


def executed(events: Path) -> set[tuple[str, str]]:
    return {(str(e["label"]), str(e["mnemonic"])) for e in read_events(events) if e["status"] == "executed"}


@pytest.mark.qemu
@pytest.mark.timeout(MIRROR_SECONDS + COMPILE_SECONDS + TCG_BOOT_SECONDS + 5 * SSH_SECONDS + POWER_OFF_SECONDS + 60)
def test_the_sshd_image_boots_on_the_kernel_built_from_source(cold: Cold, tmp_path: Path) -> None:
    require("qemu-system-x86_64")
    require("ssh")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(key)], check=True)
    port, serial = free_port(), tmp_path / "serial.log"
    with open(serial, "w") as log:
        vm = subprocess.Popen([MK, "run", IMAGE, "--accel", "tcg", "--publish", f"{port}:22", "--ssh-key",
                               f"{key}.pub"], cwd=cold.root, env=mk_env(cold.cache), stdin=subprocess.DEVNULL,
                              stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            assert wait_for_banner(port, serial).startswith("SSH-2.0-OpenSSH_9.2p1")
            uname = ssh(port, key, "uname -r; uname -v; cat /proc/version")
            assert uname.returncode == 0, uname.stderr
            release, version, proc_version = uname.stdout.splitlines()
            assert release.startswith("6.1.") and release.removeprefix("6.1.").isdigit(), release
            assert version == "#1 Thu Jan  1 00:00:00 UTC 1970"  # KBUILD_BUILD_VERSION and _TIMESTAMP
            assert proc_version.startswith(f"Linux version {release} (mk@mk) (gcc (Debian 12.2.0")
            # virtio_net is a module (examples/kernel/net.config), loaded by /init with what it needs.
            modules = ssh(port, key, "cut -d' ' -f1 /proc/modules").stdout.split()
            assert sorted(modules) == ["failover", "net_failover", "virtio_net"]
            # sshd runs as an isolated service on this kernel too: its namespaces and capabilities hold.
            status = ssh(port, key, "grep CapEff /proc/self/status; ps -o comm | sort -u").stdout.split()
            assert status[:2] == ["CapEff:", "00000000000404e1"], status
            assert set(status[2:]) <= {"COMMAND", "sshd", "sh", "ps", "sort"}, status  # its own pid namespace
            vm.send_signal(signal.SIGTERM)  # the login, in sshd's container, may not power the machine off
            assert vm.wait(timeout=POWER_OFF_SECONDS) == EXIT_INTERRUPTED
        finally:
            if vm.poll() is None:
                os.killpg(vm.pid, signal.SIGKILL)
                vm.wait(timeout=30)


@pytest.mark.timeout(MIRROR_SECONDS + COMPILE_SECONDS + MIRROR_SECONDS + 60)
def test_another_machine_gets_the_kernel_from_the_remote_cache_with_nothing_executed(
        cold: Cold, tmp_path: Path) -> None:
    root = copy_examples(tmp_path / "elsewhere")
    env = mk_env(tmp_path / "empty-cache", {"MK_REMOTE_CACHE": cold.remote, "MK_TRUSTED_KEYS": cold.public_key})
    result = mk(root, env, MIRROR_SECONDS, "reads the remote cache", "build", KERNEL)
    assert result.returncode == 0, result.stderr
    summary = parse_summary(result.stdout)
    assert (summary.executed, summary.remote) == (0, summary.actions)
    assert (root / "mk-out/examples/custom_kernel.vmlinuz").read_bytes() == \
        (cold.root / "mk-out/examples/sshd_custom_kernel/kernel").read_bytes()


@pytest.mark.timeout(MIRROR_SECONDS + 2 * COMPILE_SECONDS + 60)
def test_the_kernel_compiled_again_in_another_workspace_is_the_same_bytes(cold: Cold, tmp_path: Path) -> None:
    """`mk build --check` in a workspace at another path, with another TZ, locale and umask: every action
    of the kernel runs again, ignoring the cold build's results, and must give the same bytes."""
    root = copy_examples(tmp_path / "b" / "deeper")
    env = mk_env(cold.cache, {"TZ": "America/St_Johns", "LANG": "fr_FR.UTF-8", "LC_ALL": "fr_FR.UTF-8"})
    result = mk(root, env, MIRROR_SECONDS + COMPILE_SECONDS, "compiles the kernel again", "build", "--check", "-j",
                "2", KERNEL, umask=0o077)
    assert result.returncode == 0, tail(result.stderr, 60)
    summary = parse_summary(result.stdout)
    assert summary.executed == summary.actions  # the forced build ran everything
    assert (root / "mk-out/examples/custom_kernel.vmlinuz").read_bytes() == \
        (cold.root / "mk-out/examples/sshd_custom_kernel/kernel").read_bytes()
    # The modules: the same tree, so every module (and modules.dep, the load order) the same bytes.
    modules = Tree.decode((root / MODULES_TREE).read_bytes())
    assert sorted(e.path.rsplit("/", 1)[1] for e in modules.files() if e.path.endswith(".ko")) == [
        "failover.ko", "net_failover.ko", "virtio_net.ko"]
    cold_kernel = mk(cold.root, mk_env(cold.cache), MIRROR_SECONDS, "all cached", "build", KERNEL)
    assert parse_summary(cold_kernel.stdout).executed == 0
    assert (root / MODULES_TREE).read_bytes() == (cold.root / MODULES_TREE).read_bytes()


@pytest.mark.timeout(MIRROR_SECONDS + COMPILE_SECONDS + 2 * CONFIG_SECONDS + 60)
def test_a_fragment_option_olddefconfig_drops_is_named_and_compiles_nothing(cold: Cold, tmp_path: Path) -> None:
    root = workspace_like(cold, tmp_path / "dropped")
    fragment = root / "examples/kernel/net.config"
    line = len(fragment.read_text().splitlines()) + 1
    # An Intel network card: its vendor's menu (ETHERNET) is off in this fragment, so Kconfig drops it.
    edit(fragment, "# CONFIG_ETHTOOL_NETLINK is not set\n", "# CONFIG_ETHTOOL_NETLINK is not set\nCONFIG_E1000=y\n")
    events = tmp_path / "events.jsonl"
    result = mk(root, mk_env(cold.cache), CONFIG_SECONDS, "runs olddefconfig", "image", IMAGE, "--json-events",
                str(events))
    assert result.returncode == 0, result.stderr
    assert (f"examples/kernel/net.config:{line}:1: warning: KernelConfigCheck {KERNEL}: CONFIG_E1000=y was dropped "
            "by `make olddefconfig`: it is not in the resolved config: this kernel has no such option, or an option "
            "it depends on is off\n") in result.stderr
    # The resolved config is the same: nothing is compiled, and no image is made again.
    assert executed(events) == {(KERNEL, "KernelFragments"), (KERNEL, "KernelConfig"),
                                (KERNEL, "KernelConfigCheck")}


@pytest.mark.timeout(MIRROR_SECONDS + COMPILE_SECONDS + 2 * CONFIG_SECONDS + 60)
def test_a_compile_error_shows_the_last_lines_and_the_target(cold: Cold, tmp_path: Path) -> None:
    """A release name longer than the 64 characters `uname` holds: olddefconfig takes it, and the
    compile stops at its first step, which says so."""
    root = workspace_like(cold, tmp_path / "broken")
    long_name = f'CONFIG_LOCALVERSION="-{"x" * 70}"\n'
    edit(root / "examples/kernel/base.config", "CONFIG_64BIT=y\n", f"CONFIG_64BIT=y\n{long_name}")
    result = mk(root, mk_env(cold.cache), 2 * CONFIG_SECONDS, "runs olddefconfig, fails to compile", "build", KERNEL)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    start = next(i for i, text in enumerate(lines) if f"error: KernelCompile {KERNEL} failed" in text)
    assert lines[start].startswith("examples/BUILD:") and lines[start].endswith(" (exit code 2)")
    shown = [text for text in lines[start:] if text.startswith("  | ")]
    assert any(text.endswith('" exceeds 64 characters') for text in shown), "\n".join(lines[start:])
    # make names the target that failed (and, at -j 2, may then say it waits for the other job).
    assert any(text.startswith("  | make: *** [Makefile:") and text.endswith(
        ": include/generated/utsrelease.h] Error 1") for text in shown[-2:]), shown


@pytest.mark.timeout(MIRROR_SECONDS + 2 * COMPILE_SECONDS + CONFIG_SECONDS + 60)
def test_a_config_change_rebuilds_the_kernel_and_the_images_and_nothing_else(cold: Cold, tmp_path: Path) -> None:
    root = workspace_like(cold, tmp_path / "changed")
    edit(root / "examples/kernel/base.config", "CONFIG_64BIT=y\n", "CONFIG_64BIT=y\nCONFIG_LOCALVERSION=\"-mk\"\n")
    events = tmp_path / "events.jsonl"
    result = mk(root, mk_env(cold.cache), CONFIG_SECONDS + COMPILE_SECONDS, "compiles the changed kernel", "image",
                "-j", "2", IMAGE, "--json-events", str(events))
    assert result.returncode == 0, tail(result.stderr, 60)
    assert {label for label, _ in executed(events)} == {KERNEL, IMAGE}
    assert (KERNEL, "KernelCompile") in executed(events)
    assert (root / "mk-out/examples/sshd_custom_kernel/kernel").read_bytes() != \
        (cold.root / "mk-out/examples/sshd_custom_kernel/kernel").read_bytes()
