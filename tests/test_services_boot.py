"""Services as isolated containers, booted under QEMU (TCG): //examples:container_host serves its page
from a crun container whose rights are checked from inside the VM over ssh; //examples:counter keeps
its count on a persistent disk; a crashing service is restarted a limited number of times; the sshd of
//examples:sshd holds only the capabilities it needs. Needs the Debian mirror (for the packages) and QEMU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MIRROR_SECONDS, MK, mk_env, require, run_within, tail
from test_boot import MARGIN, SSH_SECONDS, TCG_BOOT_SECONDS, build_image, free_port, ssh, wait_for_banner

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.qemu, pytest.mark.mirror]
CRUN = "crun --cgroup-manager=disabled"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services-cache")


@pytest.fixture(scope="module")
def container_host(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, Path, Path]]:
    """//examples:container_host booted under TCG: (its web port, its ssh port, the key it accepts,
    its serial console log)."""
    require("qemu-system-x86_64")
    require("ssh")
    folder = tmp_path_factory.mktemp("container-host")
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(key)], check=True)
    build_image("//examples:container_host", mk_env(cache))
    web, sshd = free_port(), free_port()
    serial = folder / "serial.log"
    with open(serial, "w") as log:
        vm = subprocess.Popen([MK, "run", "//examples:container_host", "--accel", "tcg", "--publish", f"{web}:80",
                               "--publish", f"{sshd}:22", "--ssh-key", f"{key}.pub"], cwd=REPO, env=mk_env(cache),
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_banner(sshd, serial)
            yield web, sshd, key, serial
        finally:
            os.killpg(vm.pid, 15)
            vm.wait(timeout=30)


def page(port: int, serial: Path) -> str:
    deadline = time.monotonic() + TCG_BOOT_SECONDS
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                return str(answer.read().decode())
        except OSError:
            time.sleep(1)
    pytest.fail(f"the web service did not answer within {TCG_BOOT_SECONDS} s; the serial console's last lines:\n"
                f"{tail(serial.read_text(errors='replace'))}", pytrace=False)


def status(port: int, key: Path, service: str) -> dict[str, str]:
    """/proc/PID/status of the service's process, as the image's root sees it."""
    state = ssh(port, key, f"{CRUN} state mk-{service}")
    assert state.returncode == 0, state.stderr
    pid = json.loads(state.stdout)["pid"]
    lines = ssh(port, key, f"cat /proc/{pid}/status").stdout.splitlines()
    return {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}


def inside(port: int, key: Path, service: str, ids: str, command: str) -> subprocess.CompletedProcess[str]:
    """`command` run in the service's container (its root, namespaces and capabilities) as `ids`."""
    return ssh(port, key, f"{CRUN} exec --user {ids} mk-{service} /usr/bin/busybox {command}")


@pytest.mark.timeout(MIRROR_SECONDS + 2 * TCG_BOOT_SECONDS + 20 * SSH_SECONDS + MARGIN)
def test_the_web_service_runs_isolated_with_no_capabilities(container_host: tuple[int, int, Path, Path]) -> None:
    web, port, key, serial = container_host
    assert "Hello from a container built by mk, served by busybox httpd under crun." in page(web, serial)
    httpd = status(port, key, "web")
    assert httpd["Name"] == "busybox" and httpd["CapEff"] == "0000000000000000"
    assert httpd["CapPrm"] == httpd["CapBnd"] == httpd["CapAmb"] == "0000000000000000"
    assert httpd["Uid"].split() == ["1000"] * 4 and httpd["Gid"].split() == ["1000"] * 4  # www, as declared
    assert httpd["NoNewPrivs"] == "1"
    as_www = "1000:1000"
    assert inside(port, key, "web", as_www, "grep CapEff /proc/self/status").stdout.split() == \
        ["CapEff:", "0000000000000000"]
    # Its root is its OCI image's, not the host's: no sshd account, and its own shadow is closed to it.
    assert inside(port, key, "web", as_www, "cut -d: -f1 /etc/passwd").stdout.split() == ["root", "www"]
    shadow = inside(port, key, "web", as_www, "cat /etc/shadow")
    assert shadow.returncode != 0 and "Permission denied" in shadow.stderr + shadow.stdout
    written = inside(port, key, "web", as_www, "touch /srv/www/index.html")
    assert written.returncode != 0 and "Read-only file system" in written.stderr + written.stdout
    assert "No such file" in inside(port, key, "web", as_www, "cat /run/clock/now").stderr  # clock's tmpfs
    assert "[web] " in serial.read_text(errors="replace")  # its log, on the console with its name


@pytest.mark.timeout(MIRROR_SECONDS + TCG_BOOT_SECONDS + 20 * SSH_SECONDS + MARGIN)
def test_a_service_on_the_image_root_reads_and_writes_only_what_it_is_given(
        container_host: tuple[int, int, Path, Path]) -> None:
    _, port, key, _ = container_host
    clock = status(port, key, "clock")
    assert clock["Uid"].split() == ["65534"] * 4 and clock["CapEff"] == "0000000000000000"  # nobody
    as_nobody = "65534:65534"
    # It sees the image's root, /etc/shadow included, but cannot read it nor write anywhere but its tmpfs.
    assert inside(port, key, "clock", as_nobody, "ls /etc/shadow").returncode == 0
    shadow = inside(port, key, "clock", as_nobody, "cat /etc/shadow")
    assert shadow.returncode != 0 and "Permission denied" in shadow.stderr + shadow.stdout
    written = inside(port, key, "clock", as_nobody, "touch /etc/motd")
    assert written.returncode != 0 and "Read-only file system" in written.stderr + written.stdout
    assert inside(port, key, "clock", as_nobody, "cat /run/clock/now").stdout.strip()  # written by the service
    assert ssh(port, key, "test -e /run/clock/now || echo not-on-the-host").stdout.strip() == "not-on-the-host"
    # The web service's files and processes are out of its sight.
    web_pid = json.loads(ssh(port, key, f"{CRUN} state mk-web").stdout)["pid"]
    assert inside(port, key, "clock", as_nobody, f"ls /proc/{web_pid}").returncode != 0
    assert inside(port, key, "clock", as_nobody, "ls /srv/www").returncode != 0
    assert inside(port, key, "clock", as_nobody, "ls /run/sshd").returncode != 0  # the host's /run is not its


def run_counter(cache: Path, *options: str) -> tuple[str, str]:
    """One boot of //examples:counter (it powers off by itself): its console and mk's messages."""
    result = run_within([MK, "run", "//examples:counter", "--accel", "tcg", *options], TCG_BOOT_SECONDS,
                        "booting //examples:counter under TCG until it powers off", cwd=REPO, env=mk_env(cache))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reboot: Power down" in result.stdout, tail(result.stdout)
    return result.stdout, result.stderr


@pytest.mark.timeout(MIRROR_SECONDS + 4 * TCG_BOOT_SECONDS + MARGIN)
def test_the_counter_survives_a_reboot_with_the_same_disk_only(cache: Path, tmp_path: Path) -> None:
    require("qemu-system-x86_64")
    build_image("//examples:counter", mk_env(cache))
    kept, new = tmp_path / "kept", tmp_path / "new"
    first, told = run_counter(cache, "--disk", "data=64M", "--disk-dir", str(kept))
    assert f"mk: created the blank disk 'data' (67108864 bytes) at {kept}/data.img" in told
    assert "mk: formatting the blank disk 'data' (/dev/vda) as ext4 for /var/lib/counter" in first
    assert "[count] boot 1\n" in first.replace("\r", "")
    second, _ = run_counter(cache, "--disk", "data=64M", "--disk-dir", str(kept))
    assert "[count] boot 2\n" in second.replace("\r", "") and "formatting" not in second
    fresh, _ = run_counter(cache, "--disk", "data=64M", "--disk-dir", str(new))
    assert "[count] boot 1\n" in fresh.replace("\r", "")
    # Without the disk: said by mk run and on the console, and the step that writes there does not run.
    console, warned = run_counter(cache)
    assert "mk: warning: the disk 'data' is not attached" in warned
    assert ("mk: persistent storage /var/lib/counter needs the disk 'data', which is not attached "
            "(mk run --disk data=SIZE)") in console
    assert "mk: onboot step count is not started: it writes /var/lib/counter" in console
    assert "[count]" not in console


CRASHING = """
service(name = "crash", command = ["/usr/bin/busybox", "sh", "-c", "echo cannot go on; exit 3"], restarts = 2)
image(
    name = "crashing",
    kernel = "//examples:kernel",
    base = ["//examples:container_host_packages", "//examples:container_host_accounts"],
    network = False,
    containers = [":crash"],
    # Powers the machine off once the supervisor has given up on the service.
    services = ["/usr/bin/busybox sh -c 'until grep -q \\"stays down\\" /run/mk/log/crash.log; do sleep 1; done; \
poweroff -f'"],
)
"""


@pytest.mark.timeout(MIRROR_SECONDS + TCG_BOOT_SECONDS + MARGIN)
def test_a_crashing_service_is_restarted_a_limited_number_of_times(cache: Path, tmp_path: Path) -> None:
    require("qemu-system-x86_64")
    root = tmp_path / "ws"
    root.mkdir()
    (root / "mk.toml").write_text((REPO / "mk.toml").read_text())
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("mk-out"))
    (root / "crash").mkdir()
    (root / "crash/BUILD").write_text(CRASHING)
    build_image("//crash:crashing", mk_env(cache), root)
    result = run_within([MK, "run", "//crash:crashing", "--accel", "tcg"], TCG_BOOT_SECONDS,
                        "booting //crash:crashing under TCG until it powers off", cwd=root, env=mk_env(cache))
    console = result.stdout.replace("\r", "")
    assert result.returncode == 0 and "reboot: Power down" in console, tail(console)
    assert console.count("[crash] cannot go on\n") == 3  # the first run and two restarts
    assert "mk: service crash failed (status 3); restarting it (1 of 2)\n" in console
    assert "mk: service crash failed (status 3); restarting it (2 of 2)\n" in console
    assert "mk: service crash failed (status 3); it was restarted 2 times (restarts = 2), so it stays down\n" \
        in console


@pytest.mark.timeout(MIRROR_SECONDS + TCG_BOOT_SECONDS + 5 * SSH_SECONDS + MARGIN)
def test_sshd_as_an_isolated_service_holds_only_what_it_needs(cache: Path, tmp_path: Path) -> None:
    """//examples:sshd runs its sshd as an isolated service: a login through it lands in sshd's container."""
    require("qemu-system-x86_64")
    require("ssh")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(key)], check=True)
    build_image("//examples:sshd", mk_env(cache))
    port = free_port()
    serial = tmp_path / "serial.log"
    with open(serial, "w") as log:
        vm = subprocess.Popen([MK, "run", "//examples:sshd", "--accel", "tcg", "--publish", f"{port}:22",
                               "--ssh-key", f"{key}.pub"], cwd=REPO, env=mk_env(cache), stdin=subprocess.DEVNULL,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_banner(port, serial)
            caps = ssh(port, key, "grep -E '^Cap(Eff|Bnd)' /proc/self/status")
            # CHOWN, KILL, SETGID, SETUID, NET_BIND_SERVICE and SYS_CHROOT (bits 0, 5, 6, 7, 10, 18), no more.
            assert caps.stdout.split() == ["CapEff:", "00000000000404e1", "CapBnd:", "00000000000404e1"], caps
            commands = ssh(port, key, "ps -o comm").stdout.split()[1:]
            assert set(commands) <= {"sshd", "sh", "ps"} and "init" not in commands  # its own pid namespace
            # Its own mount namespace: its /run is a tmpfs of its own, without the image's (/run/mk holds the
            # supervisors' logs, sshd_service's among them).
            assert "mk" not in ssh(port, key, "ls /run").stdout.split()
            assert ssh(port, key, "grep ' /run ' /proc/mounts").stdout.startswith("tmpfs /run tmpfs ")
            written = ssh(port, key, "touch /etc/motd")
            assert written.returncode != 0 and "Read-only file system" in written.stderr
            assert "[sshd_service] Server listening on 0.0.0.0 port 22." in serial.read_text(errors="replace")
        finally:
            os.killpg(vm.pid, 15)
            vm.wait(timeout=30)
