"""Boots the examples under QEMU (TCG): //examples:hello prints its line, //examples:sshd takes an
ssh login with a key made by the test. Needs the Debian mirror (for the packages) and QEMU."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MIRROR_SECONDS, MK, mk_env, parse_summary, require, run_within, tail

from mk.cli import EXIT_INTERRUPTED
from mk.rules import qemu as vm
from mk.rules.providers import Boot

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.qemu, pytest.mark.mirror]


# How long each wait may take. A build against the mirror with an empty cache: MIRROR_SECONDS.
# A boot under TCG (no KVM) on a slow CI machine, to the last line or to sshd answering:
TCG_BOOT_SECONDS = 240
SSH_SECONDS = 30  # one ssh command in the booted VM
POWER_OFF_SECONDS = 60
MARGIN = 60  # ssh-keygen, copying the examples, starting and stopping processes


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("boot-cache")


def build_image(target: str, env: dict[str, str], root: Path = REPO, *options: str, umask: int = -1) -> None:
    """`mk image TARGET` against the mirror, which must succeed within MIRROR_SECONDS."""
    result = run_within([MK, "image", *options, target], MIRROR_SECONDS,
                        f"`mk image {target}` (downloads its packages from the Debian mirror)", cwd=root, env=env,
                        umask=umask)
    assert result.returncode == 0, result.stderr[-3000:]
    parse_summary(result.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def boot_until_power_off(target: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """Build the image `target` and boot it under TCG until it powers off, which it must."""
    require("qemu-system-x86_64")
    build_image(target, mk_env(cache))
    result = run_within([MK, "run", target, "--accel", "tcg"], TCG_BOOT_SECONDS,
                        f"booting {target} under TCG until it powers off", cwd=REPO, env=mk_env(cache))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.timeout(MIRROR_SECONDS + TCG_BOOT_SECONDS + MARGIN)
def test_hello_boots_and_prints_its_line(cache: Path) -> None:
    result = boot_until_power_off("//examples:hello", cache)
    assert "Hello from an mk image!" in result.stdout
    assert "reboot: Power down" in result.stdout
    assert "mk: QEMU runs with tcg (emulation: slow) because --accel tcg asks for it\n" in result.stderr


@pytest.mark.timeout(MIRROR_SECONDS + TCG_BOOT_SECONDS + MARGIN)
def test_hello_src_boots_on_busybox_built_from_source(cache: Path) -> None:
    result = boot_until_power_off("//examples:hello_src", cache)
    assert "init started: BusyBox v1.35.0 (1970-01-01 00:00:00 UTC)" in result.stdout, tail(result.stdout)
    assert "Hello from busybox built from source!" in result.stdout
    assert "could not load" not in result.stdout  # every module the kernel rule picked was loaded
    assert "reboot: Power down" in result.stdout


# Every format of an image, each checked to be reproducible.
IMAGE_FORMATS = ("tar", "oci", "squashfs", "erofs", "ext4", "kernel+squashfs", "uki", "raw-efi", "raw-bios",
                 "iso-bios", "iso-efi", "qcow2", "vhd")

# Every format the sshd example boots from, and what its root filesystem is once booted.
BOOTABLE = {"kernel+initrd": "rootfs", "kernel+squashfs": "overlay", "uki": "rootfs", "raw-efi": "overlay",
            "raw-bios": "overlay", "iso-bios": "rootfs", "iso-efi": "rootfs", "qcow2": "overlay", "vhd": "overlay"}

# The formats whose root dm-verity checks (the sshd example sets verity = True).
VERITY = {"raw-efi"}


@pytest.fixture(params=sorted(BOOTABLE))
def sshd_vm(request: pytest.FixtureRequest, cache: Path,
            tmp_path: Path) -> Iterator[tuple[int, Path, subprocess.Popen[str], Path]]:
    """The sshd example booted under TCG from each bootable format: (its ssh port on 127.0.0.1,
    the key it accepts, QEMU, its serial console log)."""
    require("qemu-system-x86_64")
    require("ssh")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(key)], check=True)
    build_image("//examples:sshd", mk_env(cache), REPO, "--format", request.param)
    port = free_port()
    serial = tmp_path / "serial.log"
    log = open(serial, "w")  # noqa: SIM115 - closed below, after the VM
    vm = subprocess.Popen([MK, "run", "//examples:sshd", "--format", request.param, "--accel", "tcg",
                           "--publish", f"{port}:22", "--ssh-key", f"{key}.pub"], cwd=REPO, env=mk_env(cache),
                          stdin=subprocess.DEVNULL,
                          stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        yield port, key, vm, serial
    finally:
        if vm.poll() is None:
            os.killpg(vm.pid, 15)
            vm.wait(timeout=30)
        log.close()


def ssh(port: int, key: Path, command: str, seconds: int = SSH_SECONDS,
        connect: int = 5) -> subprocess.CompletedProcess[str]:
    """`connect`: the seconds ssh waits for the connection and sshd's banner."""
    return run_within(
        ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect}", "-o", "LogLevel=ERROR", "root@127.0.0.1", command],
        seconds, f"`ssh root@127.0.0.1 {command}` into the VM",
    )


def wait_for_banner(port: int, serial: Path, seconds: float = TCG_BOOT_SECONDS) -> str:
    """sshd's banner, once the VM has booted far enough to answer on `port`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                banner = s.recv(64).decode(errors="replace")
                if banner.startswith("SSH-2.0-"):
                    return banner
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"sshd in the VM did not answer on port {port} within {seconds:.0f} s of booting under TCG; "
                f"the serial console's last lines:\n{tail(serial.read_text(errors='replace'))}", pytrace=False)


@pytest.mark.timeout(MIRROR_SECONDS + TCG_BOOT_SECONDS + 7 * SSH_SECONDS + POWER_OFF_SECONDS + MARGIN)
def test_sshd_accepts_a_key_login(sshd_vm: tuple[int, Path, subprocess.Popen[str], Path], tmp_path: Path,
                                  request: pytest.FixtureRequest) -> None:
    port, key, vm, serial = sshd_vm
    banner = wait_for_banner(port, serial)
    assert banner.startswith("SSH-2.0-OpenSSH_9.2p1")
    uname = ssh(port, key, "uname -r")
    assert uname.returncode == 0, uname.stderr
    assert uname.stdout.strip().endswith("-cloud-amd64")
    booted = request.node.callspec.params["sshd_vm"]
    root = ssh(port, key, "grep ' / ' /proc/mounts | cut -d' ' -f3")
    assert root.stdout.strip() == BOOTABLE[booted], root
    console = serial.read_text(errors="replace").replace("\r", "")
    if booted in VERITY:
        # Said on the console by the image's last boot step: the login, in sshd's container, cannot ask.
        roothash = (REPO / "mk-out/examples/sshd/root.roothash").read_text().strip()
        status = re.search(rf"^mk: the root is checked by dm-verity against mk.roothash={roothash}: (.*)$", console,
                           re.M)
        assert status, tail(console)
        assert re.fullmatch(r"0 \d+ verity V", status.group(1)), status  # V: every block read was verified
    else:
        assert "checked by dm-verity" not in console
    release = ssh(port, key, "cat /etc/os-release")
    assert 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"' in release.stdout
    assert ssh(port, key, "test -s /etc/ssh/ssh_host_ed25519_key && echo host-key-made-at-boot").stdout.strip() == \
        "host-key-made-at-boot"
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(other)], check=True)
    refused = ssh(port, other, "true")  # only the key given to mk run is accepted
    assert (refused.returncode, refused.stderr) == (255, "root@127.0.0.1: Permission denied (publickey).\n")
    # The login is in sshd's container, which may not power the machine off: stopped from the host, as
    # Ctrl-C in `mk run` does, it takes QEMU (and the forwarded port) down with it.
    assert ssh(port, key, "poweroff -f").returncode != 0
    vm.send_signal(signal.SIGTERM)
    try:
        assert vm.wait(timeout=POWER_OFF_SECONDS) == EXIT_INTERRUPTED
    except subprocess.TimeoutExpired:
        pytest.fail(f"`mk run` did not stop the VM within {POWER_OFF_SECONDS} s of SIGTERM; the serial console's "
                    f"last lines:\n{tail(serial.read_text(errors='replace'))}", pytrace=False)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.timeout(MIRROR_SECONDS + TCG_BOOT_SECONDS + MARGIN)
def test_verity_refuses_a_root_with_one_byte_changed(cache: Path, tmp_path: Path) -> None:
    """The raw-efi disk of //examples:sshd with one byte of its root partition flipped: dm-verity fails
    the read, and the stage-1 initrd says it cannot mount the root and powers the machine off."""
    require("qemu-system-x86_64")
    require("sfdisk")
    build_image("//examples:sshd", mk_env(cache), REPO, "--format", "raw-efi")
    out = REPO / "mk-out/examples/sshd"
    disk, variables = tmp_path / "tampered.img", tmp_path / "vars.fd"
    shutil.copyfile(out / "raw-efi.img", disk)
    shutil.copyfile(out / "OVMF_VARS_4M.fd", variables)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True).stdout)
    (root,) = [p for p in table["partitiontable"]["partitions"] if p["name"] == "root"]
    # In the root's first 4 KiB block, which mounting it reads, but past the squashfs superblock:
    # without dm-verity the filesystem would not notice.
    offset = root["start"] * 512 + 2048
    with open(disk, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))
    files = {"disk": disk, "firmware_code": out / "OVMF_CODE_4M.fd", "firmware_vars": variables}
    result = run_within(vm.command(Boot("uefi", "disk", {}), files, vm.VmOptions(), "tcg"), TCG_BOOT_SECONDS,
                        "booting the tampered raw-efi disk under TCG until its stage-1 initrd powers it off",
                        stdin=subprocess.DEVNULL)
    console = result.stdout
    roothash = (out / "root.roothash").read_text().strip()
    assert re.search(r"device-mapper: verity: [\d:]+: data block 0 is corrupted", console), tail(console)
    assert ("mk-stage1: cannot mount the root filesystem /dev/dm-0 (squashfs, checked by dm-verity against "
            f"mk.roothash={roothash})") in console, tail(console)
    assert "reboot: Power down" in console and "Server listening" not in console, tail(console)
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(2 * MIRROR_SECONDS + MARGIN)
def test_every_example_is_reproducible(tmp_path: Path) -> None:
    """Every output of //examples/... (the sshd image, and the genrules run in the sandbox on the
    locked toolchain) from two workspaces at different paths, with cold caches of their own and
    different TZ, locale, umask and -j. All but the kernel built from source and what uses it, whose
    compile takes minutes: test_custom_kernel.py compiles it again in another workspace and compares."""
    def query(*args: str) -> list[str]:
        return subprocess.run([MK, "query", *args, "--output", "label"], cwd=REPO, env=mk_env(tmp_path / "query"),
                              capture_output=True, text=True, check=True).stdout.split()

    every, from_source = query("deps", "//examples/..."), query("rdeps", "//examples:custom_kernel")
    assert from_source == ["//examples:custom_kernel", "//examples:sshd_custom_kernel"]
    targets = [label for label in every if label not in from_source]
    outputs = []
    for name, jobs, umask, tz, locale in (("a", "1", 0o022, "UTC", "C.UTF-8"),
                                          ("b/deeper", "2", 0o077, "America/St_Johns", "fr_FR.UTF-8")):
        root = tmp_path / name
        root.mkdir(parents=True)
        (root / "mk.toml").write_text((REPO / "mk.toml").read_text())
        shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("mk-out"))
        env = mk_env(tmp_path / f"cache-{jobs}", {"TZ": tz, "LANG": locale, "LC_ALL": locale})
        result = run_within([MK, "build", "-j", jobs, *targets], MIRROR_SECONDS,
                            "`mk build //examples/...` (downloads its packages from the Debian mirror)", cwd=root,
                            env=env, umask=umask)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "not hermetic" not in result.stderr
        formats = [arg for name in IMAGE_FORMATS for arg in ("--format", name)]
        result = run_within([MK, "image", "-j", jobs, "//examples:sshd", *formats], MIRROR_SECONDS,
                            "`mk image //examples:sshd` in every format", cwd=root, env=env, umask=umask)
        assert result.returncode == 0, result.stderr[-3000:]
        out = root / "mk-out"
        outputs.append({str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()})
    assert outputs[0].keys() == outputs[1].keys()
    assert {"examples/motd", "examples/file-list.txt", "examples/sshd/initrd.img", "examples/sshd/root.ext4",
            "examples/sshd/root.erofs", "examples/sshd/root.squashfs", "examples/sshd/uki.efi",
            "examples/sshd/raw-efi.img", "examples/sshd/root.verity", "examples/container_host/initrd.img",
            "examples/counter/initrd.img", "examples/web_image.oci.tar"} <= \
        outputs[0].keys()
    assert [f for f in outputs[0] if outputs[0][f] != outputs[1][f]] == []


ARM64 = ("--platform", "linux/arm64")
ARM64_SSH_SECONDS = 60



@pytest.mark.timeout(MIRROR_SECONDS + TCG_BOOT_SECONDS + 4 * ARM64_SSH_SECONDS + POWER_OFF_SECONDS + MARGIN)
@pytest.mark.parametrize("image_format", ["kernel+initrd", "kernel+squashfs", "raw-efi", "iso-efi"])
def test_sshd_for_arm64_boots_under_tcg_and_answers_ssh(cache: Path, tmp_path: Path, image_format: str) -> None:
    """//examples:sshd built for linux/arm64 on this host, booted by qemu-system-aarch64 -M virt,
    emulated (TCG) whatever --accel auto finds: from its initrd, from a squashfs root on a disk, from
    a GPT disk that AAVMF (the image's locked qemu-efi-aarch64) boots, its root checked by dm-verity,
    and from an ISO on the virt board's virtio SCSI CD drive, through systemd-boot."""
    require("qemu-system-aarch64")
    require("ssh")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(key)], check=True)
    build_image("//examples:sshd", mk_env(cache), REPO, *ARM64, "--format", image_format)
    assert (REPO / "mk-out/linux-arm64/examples/sshd/cmdline").read_text() == "console=ttyAMA0 panic=-1\n"
    port = free_port()
    serial = tmp_path / "serial.log"
    with open(serial, "w") as log:
        vm = subprocess.Popen([MK, "run", "//examples:sshd", *ARM64, "--format", image_format, "--publish",
                               f"{port}:22", "--ssh-key", f"{key}.pub"], cwd=REPO, env=mk_env(cache),
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
        try:
            assert wait_for_banner(port, serial).startswith("SSH-2.0-OpenSSH_9.2p1")
            # An emulated aarch64 on a busy host: sshd takes its time to answer each login.
            machine = ssh(port, key, "uname -m", ARM64_SSH_SECONDS, ARM64_SSH_SECONDS - 10)
            assert (machine.returncode, machine.stdout) == (0, "aarch64\n"), machine
            release = ssh(port, key, "uname -r", ARM64_SSH_SECONDS, ARM64_SSH_SECONDS - 10)
            assert release.stdout.strip().endswith("-cloud-arm64"), release
            # Init and busybox are the image's own arm64 ones (busybox is static: one ELF, for aarch64).
            elf = ssh(port, key, "head -c 20 /usr/bin/busybox | od -An -tx1 -j18 -N2", ARM64_SSH_SECONDS,
                      ARM64_SSH_SECONDS - 10)
            assert elf.stdout.split() == ["b7", "00"], elf  # e_machine 183: EM_AARCH64
            root = ssh(port, key, "grep ' / ' /proc/mounts | cut -d' ' -f3", ARM64_SSH_SECONDS, ARM64_SSH_SECONDS - 10)
            assert root.stdout.strip() == BOOTABLE[image_format], root
            vm.send_signal(signal.SIGTERM)
            assert vm.wait(timeout=POWER_OFF_SECONDS) == EXIT_INTERRUPTED
        finally:
            if vm.poll() is None:
                os.killpg(vm.pid, signal.SIGKILL)
                vm.wait(timeout=30)
    console = serial.read_text(errors="replace").replace("\r", "")
    assert "mk: QEMU runs with tcg (emulation: slow) because the image is for aarch64, which QEMU emulates on this " \
           "x86_64 host" in console
    if image_format in VERITY:
        roothash = (REPO / "mk-out/linux-arm64/examples/sshd/root.roothash").read_text().strip()
        status = re.search(rf"^mk: the root is checked by dm-verity against mk.roothash={roothash}: (.*)$", console,
                           re.M)
        assert status, tail(console)
        assert re.fullmatch(r"0 \d+ verity V", status.group(1)), status
        assert "EFI stub: Booting Linux Kernel" in console  # through the UKI's stub, as AAVMF started it
    else:
        assert "checked by dm-verity" not in console


ARM64_FORMATS = ("tar", "oci", "uki", "raw-efi", "iso-efi")


@pytest.mark.timeout(2 * MIRROR_SECONDS + MARGIN)
def test_the_arm64_sshd_image_is_reproducible(tmp_path: Path) -> None:
    """//examples:sshd for linux/arm64 (with its tar, OCI and UEFI formats), from two workspaces at
    different paths with cold caches of their own and different TZ, umask and -j: the same bytes."""
    outputs = []
    for name, jobs, umask, tz in (("a", "1", 0o022, "UTC"), ("b/deeper", "2", 0o077, "America/St_Johns")):
        root = tmp_path / name
        root.mkdir(parents=True)
        (root / "mk.toml").write_text((REPO / "mk.toml").read_text())
        shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("mk-out"))
        env = mk_env(tmp_path / f"cache-{jobs}", {"TZ": tz})
        formats = [arg for fmt in ARM64_FORMATS for arg in ("--format", fmt)]
        result = run_within([MK, "image", "-j", jobs, *ARM64, "//examples:sshd", *formats], MIRROR_SECONDS,
                            "`mk image --platform linux/arm64 //examples:sshd`", cwd=root, env=env, umask=umask)
        assert result.returncode == 0, result.stderr[-3000:]
        out = root / "mk-out"
        outputs.append({str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()})
    assert {f"linux-arm64/examples/sshd/{name}" for name in (
        "kernel", "initrd.img", "rootfs.tar", "image.oci.tar", "uki.efi", "raw-efi.img", "BOOTAA64.EFI", "root.verity",
        "iso-efi.iso", "AAVMF_CODE.fd")} <= outputs[0].keys()
    assert outputs[0].keys() == outputs[1].keys()
    assert [f for f in outputs[0] if outputs[0][f] != outputs[1][f]] == []
