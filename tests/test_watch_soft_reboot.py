"""`mk watch --run //examples:sshd` under TCG, edited while it runs: an edit of the image's files
soft-reboots the VM (its kernel stays, its userspace starts again on the new root, nothing it
wrote survives), a change on the kernel side reboots it in full. Needs the Debian mirror and QEMU."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MIRROR_SECONDS, MK, mk_env, require, tail
from test_boot import MARGIN, SSH_SECONDS, TCG_BOOT_SECONDS, build_image, free_port, ssh, wait_for_banner

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.qemu, pytest.mark.mirror]
SOFT = "mk watch: restarting the image's userspace in place (soft reboot)"
REBUILD_SECONDS = 120  # an edit to the rebuilt image, and the soft reboot
# Every entry of the root filesystem (sshd's container sees the VM's root, without its mounts),
# and every file's md5.
LISTING = ("cd / && find . -xdev -exec stat -c '%n %f %u %g %Y %s' {} + | sort; "
           "find . -xdev -type f | sort | xargs md5sum")


def _root(listing: str) -> dict[str, list[str]]:
    """Path: mode, owner, group, mtime, size (of a file), md5 (of a file)."""
    entries: dict[str, list[str]] = {}
    for line in listing.splitlines():
        words = line.split()
        if len(words) == 6:
            path, mode, uid, gid, mtime, size = words
            entries[path] = [mode, uid, gid, mtime, size if mode.startswith("8") else ""]
        else:
            entries[words[1]].append(words[0])
    return entries


def _same_roots(soft: dict[str, list[str]], full: dict[str, list[str]]) -> None:
    """The root after soft reboots against the root after a full boot of the same tree: entry
    for entry, but for what each boot wrote (its mtime is the boot's, the image's is 0) and the
    root folder itself (its mtime is the boot's)."""
    assert sorted(soft) == sorted(full)
    differ = [path for path in full if path != "." and soft[path] != full[path]
              and not (soft[path][3] != "0" and full[path][3] != "0")]
    assert differ == [], [(path, soft[path], full[path]) for path in differ]
    assert soft["."][:3] == full["."][:3]


@pytest.mark.timeout(MIRROR_SECONDS + 3 * TCG_BOOT_SECONDS + 4 * REBUILD_SECONDS + 12 * SSH_SECONDS + MARGIN)
def test_an_edit_soft_reboots_the_vm_and_a_kernel_change_reboots_it(tmp_path: Path) -> None:
    require("qemu-system-x86_64")
    require("ssh")
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(REPO / "mk.toml", ws / "mk.toml")
    shutil.copytree(REPO / "examples", ws / "examples")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(key)], check=True)
    env = mk_env(tmp_path / "cache")
    build_image("//examples:sshd", env, ws)  # the packages, from the mirror, before the clock below runs
    port = free_port()
    console, said = tmp_path / "console.log", tmp_path / "stderr.log"
    with open(console, "w") as out, open(said, "w") as err:
        watch = subprocess.Popen([MK, "watch", "//examples:sshd", "--run", "--accel", "tcg", "--publish",
                                  f"{port}:22", "--ssh-key", f"{key}.pub"], cwd=ws, env=env,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)

    def in_vm(command: str) -> str:
        result = ssh(port, key, command)
        assert result.returncode == 0, (command, result.stderr, tail(console.read_text(errors="replace")))
        return result.stdout

    def until_said(line: str, count: int, seconds: float = REBUILD_SECONDS) -> None:
        deadline = time.monotonic() + seconds
        while said.read_text().splitlines().count(line) < count:
            assert watch.poll() is None, said.read_text()
            assert time.monotonic() < deadline, f"no {line!r} within {seconds} s:\n{said.read_text()}"
            time.sleep(0.1)

    def until(condition: Callable[[str], bool], seconds: float = REBUILD_SECONDS) -> None:
        deadline = time.monotonic() + seconds
        while not condition(said.read_text()):
            assert watch.poll() is None, said.read_text()
            assert time.monotonic() < deadline, said.read_text()
            time.sleep(0.1)

    config, build = ws / "examples/sshd_config", ws / "examples/BUILD"
    original = build.read_text()
    extra_file = '"/etc/ssh/sshd_config": "sshd_config", "/usr/share/soft-reboot/test": "motd.in"'
    try:
        wait_for_banner(port, console)
        before = in_vm("cat /etc/ssh/ssh_host_ed25519_key.pub; grep -c . /root/.ssh/authorized_keys")
        assert before.splitlines()[-1] == "1"
        boot_id = in_vm("cat /proc/sys/kernel/random/boot_id")

        # An edit of a file, and a file added: a soft reboot.
        config.write_text(config.read_text() + "# edited under mk watch\n")
        build.write_text(original.replace('"/etc/ssh/sshd_config": "sshd_config"', extra_file, 1))
        until(lambda text: "mk watch: soft reboot done in" in text)
        wait_for_banner(port, console, REBUILD_SECONDS)
        assert in_vm("tail -n 1 /etc/ssh/sshd_config") == "# edited under mk watch\n"
        assert in_vm("cat /usr/share/soft-reboot/test") == (ws / "examples/motd.in").read_text()
        after = in_vm("cat /etc/ssh/ssh_host_ed25519_key.pub; grep -c . /root/.ssh/authorized_keys")
        # What the boot wrote is gone, so made again: a new host key, the authorized key once.
        assert after.splitlines()[-1] == "1"
        assert after.splitlines()[0] != before.splitlines()[0]
        assert in_vm("cat /proc/sys/kernel/random/boot_id") == boot_id  # the same kernel
        # A folder the update wrote into has the image's mtime (as every folder the boot leaves alone).
        assert in_vm("stat -c %Y /usr/share/soft-reboot /usr/share") == in_vm("stat -c %Y /usr/lib /usr/lib")
        assert said.read_text().count(SOFT) == 1

        # The file removed again: a second soft reboot.
        build.write_text(original)
        until(lambda text: text.count("mk watch: soft reboot done in") == 2)
        wait_for_banner(port, console, REBUILD_SECONDS)
        assert in_vm("test -e /usr/share/soft-reboot || echo gone") == "gone\n"
        assert in_vm("stat -c %Y /usr/share") == in_vm("stat -c %Y /usr/lib")
        soft_root = _root(in_vm(LISTING))

        # A change on the kernel side (its command line): a full reboot, which says why.
        build.write_text(original.replace('    kernel = ":kernel",\n    # The disk formats',
                                          '    kernel = ":kernel",\n    cmdline = "console=ttyS0 panic=-1 mk.test",\n'
                                          '    # The disk formats', 1))
        until_said("mk watch: a full reboot: the kernel command line changed", 1)
        until_said("mk watch: starting the image", 2)
        wait_for_banner(port, console)
        assert in_vm("cat /proc/sys/kernel/random/boot_id") != boot_id
        assert re.search(r"\bmk\.test\b", in_vm("cat /proc/cmdline"))
        assert said.read_text().count(SOFT) == 2
        _same_roots(soft_root, _root(in_vm(LISTING)))  # the command line is not in the root
    finally:
        os.killpg(watch.pid, signal.SIGINT)
        watch.wait(timeout=60)
    assert "mk watch: stopped" in said.read_text()


@pytest.mark.timeout(MIRROR_SECONDS + TCG_BOOT_SECONDS + MARGIN)
def test_a_power_off_inside_the_watched_vm_powers_it_off(tmp_path: Path) -> None:
    """//examples:hello powers off from its last onboot step, inside the agent's namespace: the
    agent then powers the machine off, as a power-off did before there was an agent."""
    require("qemu-system-x86_64")
    env = mk_env(tmp_path / "cache")
    build_image("//examples:hello", env)
    console = tmp_path / "console.log"
    with open(console, "w") as out:
        watch = subprocess.Popen([MK, "watch", "//examples:hello", "--run", "--accel", "tcg"], cwd=REPO, env=env,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        deadline = time.monotonic() + TCG_BOOT_SECONDS
        while "reboot: Power down" not in console.read_text(errors="replace"):
            assert time.monotonic() < deadline, tail(console.read_text(errors="replace"))
            time.sleep(0.2)
    finally:
        os.killpg(watch.pid, signal.SIGINT)
        watch.wait(timeout=60)
    text = console.read_text(errors="replace")
    assert "Hello from an mk image!" in text
    assert "mk-init: no soft reboots" not in text  # it ran inside the agent's namespace
