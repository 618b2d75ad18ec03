"""Boots the examples under QEMU (TCG): //examples:hello prints its line, //examples:sshd takes an
ssh login with a key made by the test. Needs the Debian mirror (for the packages) and QEMU."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MK, mk_env, parse_summary, require

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.qemu, pytest.mark.mirror]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("boot-cache")


def mk(*args: str, cache: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MK, *args], cwd=REPO, env=mk_env(cache), capture_output=True, text=True,
                          timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_hello_boots_and_prints_its_line(cache: Path) -> None:
    require("qemu-system-x86_64")
    result = mk("run", "//examples:hello", "--accel", "tcg", cache=cache, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Hello from an mk image!" in result.stdout
    assert "reboot: Power down" in result.stdout


@pytest.fixture
def sshd_vm(cache: Path, tmp_path: Path) -> Iterator[tuple[int, Path, subprocess.Popen[str]]]:
    require("qemu-system-x86_64")
    require("ssh")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(key)], check=True)
    build = mk("image", "//examples:sshd", cache=cache)
    assert build.returncode == 0, build.stderr[-3000:]
    parse_summary(build.stdout)
    port = free_port()
    log = open(tmp_path / "serial.log", "w")  # noqa: SIM115 - closed below, after the VM
    vm = subprocess.Popen([MK, "run", "//examples:sshd", "--accel", "tcg", "--publish", f"{port}:22",
                           "--ssh-key", f"{key}.pub"], cwd=REPO, env=mk_env(cache), stdin=subprocess.DEVNULL,
                          stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        yield port, key, vm
    finally:
        if vm.poll() is None:
            os.killpg(vm.pid, 15)
            vm.wait(timeout=30)
        log.close()


def ssh(port: int, key: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "root@127.0.0.1", command],
        capture_output=True, text=True, timeout=60, check=False,
    )


def wait_for_banner(port: int, deadline: float) -> str:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                banner = s.recv(64).decode(errors="replace")
                if banner.startswith("SSH-2.0-"):
                    return banner
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError("no ssh banner within the deadline")


def test_sshd_accepts_a_key_login(sshd_vm: tuple[int, Path, subprocess.Popen[str]], tmp_path: Path) -> None:
    port, key, vm = sshd_vm
    banner = wait_for_banner(port, time.monotonic() + 180)
    assert banner.startswith("SSH-2.0-OpenSSH_9.2p1")
    uname = ssh(port, key, "uname -r")
    assert uname.returncode == 0, uname.stderr
    assert uname.stdout.strip().endswith("-cloud-amd64")
    release = ssh(port, key, "cat /etc/os-release")
    assert 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"' in release.stdout
    assert ssh(port, key, "test -s /etc/ssh/ssh_host_ed25519_key && echo host-key-made-at-boot").stdout.strip() == \
        "host-key-made-at-boot"
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(other)], check=True)
    assert ssh(port, other, "true").returncode != 0  # only the key given to mk run is accepted
    ssh(port, key, "poweroff -f")
    assert vm.wait(timeout=60) == 0


def test_sshd_image_is_reproducible(tmp_path: Path) -> None:
    """Two workspaces at different paths, with different caches, TZ, umask and -j."""
    digests = []
    for name, jobs, umask, tz in (("a", "1", 0o022, "UTC"), ("b/deeper", "2", 0o077, "America/St_Johns")):
        root = tmp_path / name
        root.mkdir(parents=True)
        (root / "mk.toml").write_text((REPO / "mk.toml").read_text())
        shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("mk-out"))
        result = subprocess.run([MK, "image", "-j", jobs, "//examples:sshd"], cwd=root,
                                env=mk_env(tmp_path / f"cache-{jobs}", {"TZ": tz}), umask=umask,
                                capture_output=True, text=True, timeout=900, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        out = root / "mk-out/examples/sshd"
        digests.append({f: (out / f).read_bytes() for f in ("kernel", "initrd.img", "cmdline", "manifest.json")})
    assert digests[0] == digests[1]
