"""kernel, image and mk run, offline: generated kernel and busybox packages, no boot."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest
import zstandard
from conftest import MK, WorkspaceFactory, mk_env, read_events, require
from debrepo import Deb, Member, Repo

from mk.engine.errors import MkError
from mk.rules import qemu as vm
from mk.rules.kernel import modinfo_depends
from mk.rules.providers import Boot

RELEASE = "6.1.0-1-test"


def module(name: str, depends: str) -> bytes:
    """A minimal ELF64 relocatable file whose .modinfo section says `depends=`."""
    modinfo = f"license=GPL\0depends={depends}\0name={name}\0".encode()
    names = b"\0.modinfo\0.shstrtab\0"
    shoff = 64 + len(modinfo) + len(names)
    shoff += -shoff % 8
    fields = (1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)  # REL, x86-64, ..., 3 sections, names in #2
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", *fields)
    sections = bytes(64)
    sections += struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, 64, len(modinfo), 0, 0, 1, 0)
    sections += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, 64 + len(modinfo), len(names), 0, 0, 1, 0)
    body = header + modinfo + names
    return body + bytes(shoff - len(body)) + sections


MODULES = {  # name: (path under kernel/, depends)
    "virtio_ring": ("drivers/virtio", ""),
    "virtio": ("drivers/virtio", "virtio_ring"),
    "virtio_pci_modern_dev": ("drivers/virtio", ""),
    "virtio_pci": ("drivers/virtio", "virtio,virtio_ring,virtio_pci_modern_dev"),
    "failover": ("net/core", ""),
    "net_failover": ("drivers/net", "failover"),
    "virtio_net": ("drivers/net", "net_failover,virtio,virtio_ring,crc32c_generic"),
    "unused": ("drivers/misc", ""),
}


def kernel_deb() -> Deb:
    base = f"./lib/modules/{RELEASE}"
    members = [Member("./boot/", kind="dir"), Member(f"./boot/vmlinuz-{RELEASE}", b"not really a kernel")]
    members += [Member(f"{base}/kernel/{path}/{name}.ko", module(name, deps)) for name, (path, deps) in MODULES.items()]
    members.append(Member(f"{base}/modules.builtin", b"kernel/crypto/crc32c_generic.ko\n"))
    return Deb(f"linux-image-{RELEASE}", "6.1.1-1", members=members)


BUILD = """
deb_packages(name = "kernel_packages", packages = ["linux-image-6.1.0-1-test"], keyring = "{keyring}")
kernel(name = "kernel", packages = ":kernel_packages", modules = {modules})
deb_packages(name = "busybox", packages = ["busybox-static"], keyring = "{keyring}")
layer(name = "motd", files = {{"/etc/motd": "motd"}})
image(
    name = "box",
    kernel = ":kernel",
    base = [":busybox", ":motd"],
    hostname = "boxy",
    cmdline = "console=ttyS0 quiet",
    onboot = ["echo first", "echo second"],
    services = ["/usr/bin/sleep-forever"],
    ssh_key_user = "root",
)
image(name = "bare", kernel = ":kernel", base = [":motd"])
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    repo = Repo(tmp_path_factory.mktemp("kernel") / "repo")
    repo.add("bookworm", kernel_deb(),
             Deb("busybox-static", members=[Member("./bin/", kind="dir"),
                                            Member("./bin/busybox", b"\x7fELF busybox", mode=0o755)]))
    repo.add("bookworm-updates")
    repo.add("bookworm-security")
    repo.publish()
    return repo


def image_workspace(workspace: WorkspaceFactory, repo: Repo, modules: str = '["virtio_pci", "virtio_net"]',
                    name: str = "ws") -> Path:
    ws = workspace({"img/BUILD": BUILD.format(keyring=repo.keyring, modules=modules), "img/motd": "hi\n"},
                   name=name, toml=f'debian_mirror = "{repo.url}"\n')
    for target in ("kernel_packages", "busybox"):
        assert ws.mk("lock", f"//img:{target}").code == 0
    return ws.root


def mk(root: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MK, *args], cwd=root, env=mk_env(cache), capture_output=True, text=True, check=False)


def unpack_initrd(initrd: Path, into: Path) -> None:
    into.mkdir()
    data = zstandard.ZstdDecompressor().stream_reader(initrd.open("rb")).read()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=data, cwd=into, check=True)


def test_modinfo_depends_reads_the_elf_section() -> None:
    assert modinfo_depends(module("x", "a,b")) == ["a", "b"]
    assert modinfo_depends(module("x", "")) == []
    with pytest.raises(ValueError, match="not a 64-bit little-endian ELF"):
        modinfo_depends(b"MZ not an elf")


def test_kernel_closure_and_load_order(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "image", "//img:box")
    assert result.returncode == 0, result.stderr
    unpack_initrd(root / "mk-out/img/box/initrd.img", tmp_path / "initrd")
    base = f"/usr/lib/modules/{RELEASE}/kernel"
    load = (tmp_path / "initrd/etc/mk/modules.load").read_text().split()
    assert [Path(p).stem for p in load] == [
        "failover", "net_failover", "virtio_ring", "virtio", "virtio_net", "virtio_pci_modern_dev", "virtio_pci"]
    assert load[0] == f"{base}/net/core/failover.ko"
    dep = (tmp_path / f"initrd/usr/lib/modules/{RELEASE}/modules.dep").read_text()
    assert "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n" in dep
    assert not (tmp_path / f"initrd{base}/drivers/misc/unused.ko").exists()  # only the closure
    assert (tmp_path / "initrd/etc/mk/kernel.release").read_text() == RELEASE + "\n"


def test_image_contents_and_outputs(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "image", "//img:box", "--format", "tar")
    assert result.returncode == 0, result.stderr
    out = root / "mk-out/img/box"
    assert sorted(p.name for p in out.iterdir()) == [
        "cmdline", "initrd.img", "kernel", "manifest.json", "rootfs.tar", "sbom.spdx.json"]
    assert (out / "cmdline").read_text() == "console=ttyS0 quiet\n"
    assert (out / "kernel").read_bytes() == b"not really a kernel"
    manifest = json.loads((out / "manifest.json").read_text())
    import hashlib

    assert manifest["initrd.img"]["sha256"] == hashlib.sha256((out / "initrd.img").read_bytes()).hexdigest()
    sbom = json.loads((out / "sbom.spdx.json").read_text())
    assert [p["name"] for p in sbom["packages"]] == ["busybox-static"]
    unpack_initrd(out / "initrd.img", tmp_path / "initrd")
    image = tmp_path / "initrd"
    assert (image / "init").stat().st_mode & 0o111
    assert (image / "init").read_text().startswith("#!/usr/bin/busybox sh\n")
    assert "exec /usr/bin/busybox init" in (image / "init").read_text()
    inittab = (image / "etc/inittab").read_text()
    assert "::sysinit:/etc/mk/onboot\n" in inittab and "::respawn:/usr/bin/sleep-forever\n" in inittab
    onboot = (image / "etc/mk/onboot").read_text()
    assert onboot.index("udhcpc") < onboot.index("mk.authorized_key") < onboot.index("( echo first )") < \
        onboot.index("( echo second )")
    # `mk run --ssh-key` on an image booted by its firmware passes the key through QEMU's fw_cfg
    assert "key=/sys/firmware/qemu_fw_cfg/by_name/opt/mk/authorized_key/raw\n" in onboot
    assert (image / "etc/hostname").read_text() == "boxy\n"
    assert (image / "etc/motd").read_text() == "hi\n"
    assert (image / "bin").is_symlink() and (image / "usr/bin/busybox").is_file()
    assert not list(image.rglob("ssh_host_*")) and not list(image.rglob("authorized_keys"))
    listing = subprocess.run(["tar", "-tf", out / "rootfs.tar"], capture_output=True, text=True, check=True).stdout
    # The tar format holds the same root filesystem as the initrd: /init and all.
    assert {line.rstrip("/") for line in listing.splitlines()} == {str(p.relative_to(image)) for p in image.rglob("*")}


def test_mk_image_takes_the_options_of_mk_build(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    events, profile = tmp_path / "events.jsonl", tmp_path / "trace.json"
    result = mk(root, tmp_path / "cache", "image", "//img:box", "--format", "tar", "-j", "1",
                "--json-events", str(events), "--profile", str(profile))
    assert result.returncode == 0, result.stderr
    executed = {e["mnemonic"] for e in read_events(events) if e["status"] == "executed"}
    assert {"Tar", "Initrd", "Manifest"} <= executed
    trace = json.loads(profile.read_text())
    assert any(e["ph"] == "X" and e["name"] == "Tar //img:box" for e in trace["traceEvents"])
    # --check rebuilds everything the command asked for, the formats included, and compares the bytes.
    events.unlink()
    checked = mk(root, tmp_path / "cache", "image", "//img:box", "--format", "tar", "--check",
                 "--json-events", str(events))
    assert checked.returncode == 0, checked.stderr
    forced = [e["mnemonic"] for e in read_events(events) if e["status"] == "executed"]
    assert "Tar" in forced and "Initrd" in forced


def test_lock_of_an_image_says_what_it_is_in_good_english(workspace: WorkspaceFactory, repo: Repo) -> None:
    root = image_workspace(workspace, repo)
    result = subprocess.run([MK, "lock", "//img:box"], cwd=root, env=mk_env(root.parent / "cache"),
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "error: //img:box is an image; `mk lock` works on deb_packages targets" in result.stderr, result.stderr


def test_image_without_busybox_is_refused(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "image", "//img:bare")
    assert result.returncode == 1
    assert ("error: ImageRoot //img:bare failed: the image has no /usr/bin/busybox, which its init needs: "
            "add busybox-static to 'base'") in result.stderr


def test_unknown_module_is_named(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo, modules='["virtio_nett"]')
    result = mk(root, tmp_path / "cache", "build", "//img:kernel")
    assert result.returncode == 1
    assert (f"error: KernelModules //img:kernel failed: module 'virtio_nett' (needed by the kernel rule) is not in "
            f"kernel {RELEASE} (did you mean 'virtio_net' or 'virtio_ring' or 'virtio'?)") in result.stderr


def test_qemu_command_line(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_text("console=ttyS0\n")
    require(vm.QEMU)
    options = vm.VmOptions(mem="1G", cpus=2, publish=((2222, 22), (8080, 80)), ssh_key="ssh-ed25519 AAAA key@host")
    files = {role: tmp_path / role for role in ("kernel", "initrd", "cmdline")}
    command = vm.command(Boot("direct", "kernel", {}), files, options, "tcg")
    assert command[1:7] == ["-accel", "tcg", "-m", "1G", "-smp", "2"]
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80" in command
    append = command[command.index("-append") + 1]
    assert append.startswith("console=ttyS0 mk.authorized_key=")
    assert "-fw_cfg" not in command
    import base64

    assert base64.urlsafe_b64decode(append.split("=", 2)[2]).decode() == "ssh-ed25519 AAAA key@host"


def test_qemu_command_line_of_a_disk_the_firmware_boots(tmp_path: Path) -> None:
    require(vm.QEMU)
    options = vm.VmOptions(ssh_key="ssh-ed25519 AAAA key@host")
    command = vm.command(Boot("bios", "disk", {}, "qcow2"), {"disk": tmp_path / "disk.qcow2"}, options, "tcg")
    assert command[command.index("-drive") + 1] == f"file={tmp_path}/disk.qcow2,if=virtio,format=qcow2"
    assert "-snapshot" in command and "-kernel" not in command and "-append" not in command
    # The command line is on the disk: the key goes through QEMU's firmware configuration instead.
    name, value = command[command.index("-fw_cfg") + 1].split(",")
    assert name == "name=opt/mk/authorized_key"
    import base64

    assert base64.urlsafe_b64decode(value.removeprefix("string=")).decode() == "ssh-ed25519 AAAA key@host"


def test_qemu_command_line_of_a_cdrom(tmp_path: Path) -> None:
    require(vm.QEMU)
    command = vm.command(Boot("bios", "cdrom", {}), {"cdrom": tmp_path / "image.iso"}, vm.VmOptions(), "tcg")
    assert command[command.index("-cdrom") + 1] == f"{tmp_path}/image.iso"
    assert command[command.index("-boot") + 1] == "d"
    assert "-drive" not in command and "-fw_cfg" not in command and "-snapshot" not in command


def test_run_arguments_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert vm.parse_publish("2222:22") == (2222, 22)
    for bad in ("22", "a:b", "0:22", "70000:22"):
        with pytest.raises(MkError, match="expected HOST:GUEST port numbers"):
            vm.parse_publish(bad)
    private = tmp_path / "id"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(MkError, match="expected one OpenSSH public key line"):
        vm.read_ssh_key(private)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MkError, match="qemu-system-x86_64 is not installed; on Debian: apt-get install"):
        vm.qemu_binary()


def no_probe(image: Path) -> bool:
    raise AssertionError("the KVM probe ran")


def test_accel_auto_without_kvm_is_tcg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Path, "exists", lambda self: False if str(self) == "/dev/kvm" else Path.is_file(self))
    monkeypatch.setattr(vm, "_kvm_boots", no_probe)
    assert vm.choose_accel("auto", tmp_path, tmp_path / "state") == "tcg"
    assert not (tmp_path / "state").exists()  # nothing to remember: there is no /dev/kvm


@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_an_explicit_accel_is_used_without_a_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accel: str) -> None:
    monkeypatch.setattr(vm, "_kvm_boots", no_probe)
    assert vm.choose_accel(accel, tmp_path, tmp_path / "state") == accel
    assert not (tmp_path / "state").exists()


def test_accel_auto_probes_kvm_once_per_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Path, "exists", lambda self: True if str(self) == "/dev/kvm" else Path.is_file(self))
    probes: list[Path] = []

    def guests_hang(image: Path) -> bool:  # /dev/kvm is there, but guests hang under it
        probes.append(image)
        return False

    monkeypatch.setattr(vm, "_kvm_boots", guests_hang)
    assert vm.choose_accel("auto", tmp_path, tmp_path / "state") == "tcg"
    assert vm.choose_accel("auto", tmp_path, tmp_path / "state") == "tcg"
    assert probes == [tmp_path]
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert (tmp_path / "state" / f"kvm-works-{boot_id}").read_text() == "tcg\n"


def test_unknown_accel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MkError) as error:
        vm.choose_accel("hvf", tmp_path, tmp_path / "state")
    assert str(error.value) == "error: --accel hvf: choose tcg, kvm or auto"
