"""The QEMU runner (`mk run`, `mk watch --run`): boot an image in QEMU, with user-mode networking: its
kernel and initrd directly, or (`--format`) a disk or a UKI through the firmware the format names
(OVMF, or AAVMF for an arm64 image, for the UEFI formats, from the image's locked `firmware`
package).

The serial console is the terminal. `--accel auto` uses KVM only when a short probe shows that
guests actually run under it (on some machines /dev/kvm exists but guests hang), and the
answer is remembered until the host reboots; mk says which accelerator it picked, and why.
Published host ports are checked free before QEMU starts, so a port in use is named, not left to
QEMU's "Could not set up host forwarding rule". Ctrl-A X (QEMU's console), Ctrl-C or `poweroff`
in the guest stops the VM; nothing is left running.

Under `mk watch --run` a VM booted from the kernel and initrd can soft-reboot onto a rebuilt image
(`VirtualMachine.reload`): its kernel keeps running and the image's userspace starts again on the
new root (see mk/rules/init.py and vm_agent.py). Anything else needs a full reboot, and says why.
"""

from __future__ import annotations

import base64
import errno
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import click

from mk.engine.errors import MkError
from mk.engine.registry import Runner
from mk.engine.rule_api import Provider
from mk.rules.cache_parts import VM
from mk.rules.formats.compression import decompressed
from mk.rules.init import FW_CFG_KEY
from mk.rules.providers import Boot, ImageInfo
from mk.rules.soft_reboot import ArchiveError, Booted
from mk.rules.vm_agent import Agent

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class Machine:
    """What QEMU emulates for an image's architecture (`uname -m`), and where to get it on Debian."""

    binary: str
    args: tuple[str, ...]  # the board and CPU
    package: str
    tcg_args: tuple[str, ...] = ()  # what TCG adds (under KVM the CPU model stays QEMU's default)
    scsi_cdrom: bool = False  # the board has no IDE for -cdrom: the CD drive is on a virtio SCSI controller

    def cdrom(self, iso: Path) -> list[str]:
        if not self.scsi_cdrom:
            return ["-cdrom", str(iso), "-boot", "d"]
        return ["-drive", f"file={iso},if=none,id=cdrom,media=cdrom,readonly=on", "-device", "virtio-scsi-pci",
                "-device", "scsi-cd,drive=cdrom"]


MACHINES = {
    # TCG's default x86 CPU has no RDRAND, so the guest's random pool waited seconds for entropy at
    # each boot (sshd's host key is made at boot, and blocked on it); QEMU emulates the instruction
    # from the host's getrandom. (aarch64's `max` CPU has RNDR already.)
    "x86_64": Machine(QEMU, (), "qemu-system-x86", tcg_args=("-cpu", "qemu64,+rdrand")),
    # The virt board with a 64-bit CPU that has every feature TCG emulates.
    "aarch64": Machine("qemu-system-aarch64", ("-M", "virt", "-cpu", "max"), "qemu-system-arm", scsi_cdrom=True),
}
DEFAULT_FORMAT = "kernel+initrd"
_PROBE_SECONDS = 8.0


@dataclass(frozen=True)
class Disk:
    """A persistent disk (`--disk NAME=SIZE`): the guest finds it by its serial number, NAME."""

    name: str
    path: Path
    size: int  # bytes, when it is created; an existing disk keeps its own


@dataclass(frozen=True)
class VmOptions:
    mem: str = "512M"
    cpus: int = 1
    accel: str = "auto"  # tcg, kvm or auto
    publish: tuple[tuple[int, int], ...] = ()  # (host port, guest port), on 127.0.0.1
    ssh_key: str | None = None  # an OpenSSH public key, installed at boot for the image's ssh_key_user
    disks: tuple[Disk, ...] = ()

    def __post_init__(self) -> None:
        published: dict[int, int] = {}
        for host, guest in self.publish:
            if host in published:
                raise MkError(f"--publish {host}:{guest}: host port {host} is already published to guest port "
                              f"{published[host]}")
            published[host] = guest


@dataclass(frozen=True)
class Accel:
    """The accelerator QEMU runs with, and why it was picked."""

    name: str  # kvm or tcg
    why: str

    def __str__(self) -> str:
        slow = " (emulation: slow)" if self.name == "tcg" else ""
        return f"mk: QEMU runs with {self.name}{slow} because {self.why}"


def qemu_binary(machine: str = "x86_64") -> str:
    wanted = MACHINES[machine]
    found = shutil.which(wanted.binary)
    if found is None:
        raise MkError(f"{wanted.binary} is not installed; on Debian: apt-get install {wanted.package}")
    return found


def parse_publish(spec: str) -> tuple[int, int]:
    host, sep, guest = spec.partition(":")
    if not sep or not host.isdigit() or not guest.isdigit() or not (0 < int(host) < 65536 and 0 < int(guest) < 65536):
        raise MkError(f"--publish {spec}: expected HOST:GUEST port numbers, e.g. 2222:22")
    return int(host), int(guest)


_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_disk(spec: str, folder: Path) -> Disk:
    """`NAME=SIZE` (SIZE in bytes, or with K, M, G or T): the disk NAME.img in `folder`."""
    name, sep, size = spec.partition("=")
    unit = _SIZE_UNITS.get(size[-1:].upper(), 1) if size else 1
    digits = size[:-1] if size[-1:].upper() in _SIZE_UNITS else size
    if not sep or not name or not digits.isdigit() or int(digits) == 0:
        raise MkError(f"--disk {spec}: expected NAME=SIZE, e.g. data=1G")
    return Disk(name, folder / f"{name}.img", int(digits) * unit)


def attach(disk: Disk) -> None:
    """Creates the disk (sparse, all zeros: blank, so the guest formats it) unless it exists."""
    if disk.path.exists():
        return
    disk.path.parent.mkdir(parents=True, exist_ok=True)
    with open(disk.path, "xb") as f:
        f.truncate(disk.size)
    print(f"mk: created the blank disk '{disk.name}' ({disk.size} bytes) at {disk.path}; it is kept for the next "
          "runs", file=sys.stderr, flush=True)


def read_ssh_key(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise MkError(f"--ssh-key {path}: {e.strerror}") from None
    if len(lines) != 1 or not lines[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise MkError(f"--ssh-key {path}: expected one OpenSSH public key line (a .pub file), not a private key")
    return lines[0]


def command(boot: Boot, files: Mapping[str, Path], options: VmOptions, accel: str,
            machine: str = "x86_64", agent: Agent | None = None) -> list[str]:
    """QEMU's command line for `boot`, whose files (by role, see `Boot`) are at `files`, on an
    emulated `machine` (what the image's `uname -m` says); with the devices of `agent`, and the
    word that starts it in the guest, for soft reboots."""
    forwards = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in options.publish)
    args = [
        qemu_binary(machine), *MACHINES[machine].args, "-accel", accel, "-m", options.mem, "-smp", str(options.cpus),
        "-nographic", "-no-reboot",
        *(MACHINES[machine].tcg_args if accel == "tcg" else ()),
        "-netdev", f"user,id=net0{forwards}", "-device", "virtio-net-pci,netdev=net0",
    ]
    if "disk" in files:
        # -snapshot: the guest's writes go to a temporary file, never into mk-out.
        args += ["-snapshot", "-drive", f"file={files['disk']},if=virtio,format={boot.disk_format}"]
    for disk in options.disks:
        # snapshot=off: what the guest writes there is kept, which -snapshot would otherwise discard.
        args += ["-drive", f"file={disk.path},if=none,id=disk-{disk.name},format=raw,snapshot=off",
                 "-device", f"virtio-blk-pci,drive=disk-{disk.name},serial={disk.name}"]
    if "cdrom" in files:
        args += MACHINES[machine].cdrom(files["cdrom"])
    # base64url keeps the key one word (on the kernel command line, or in a fw_cfg string); the
    # image's onboot step decodes it.
    key = base64.urlsafe_b64encode(options.ssh_key.encode()).decode() if options.ssh_key else None
    if boot.firmware == "direct":
        cmdline = files["cmdline"].read_text(encoding="utf-8").strip()
        if key:
            cmdline += f" mk.authorized_key={key}"
        if agent is not None:
            cmdline += " mk.watch"
            args += agent.qemu_args()
        args += ["-kernel", str(files["kernel"]), "-initrd", str(files["initrd"]), "-append", cmdline]
        return args
    if boot.firmware == "uefi":
        # `files["firmware_vars"]` is written to: a copy made for this run (see VirtualMachine).
        args += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={files['firmware_code']}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={files['firmware_vars']}"]
        if boot.medium == "kernel":  # a UKI, which the firmware starts with the command line it holds
            args += ["-kernel", str(files["kernel"])]
    if key:
        # The command line is the image's own here (inside the UKI, or on the disk): the key goes
        # through QEMU's firmware configuration, which the guest reads in /sys/firmware/qemu_fw_cfg.
        args += ["-fw_cfg", f"name={FW_CFG_KEY},string={key}"]
    return args


def choose_accel(requested: str, image: Path | None, state_dir: Path, machine: str = "x86_64") -> Accel:
    """`image`: the folder holding a kernel to probe KVM with (None: no probe is possible)."""
    if machine != platform.machine():
        if requested == "kvm":
            raise MkError(f"--accel kvm: the image is for {machine} and this host is {platform.machine()}; KVM runs "
                          "only guests of the host's own architecture (use --accel tcg)")
        return Accel("tcg", f"the image is for {machine}, which QEMU emulates on this {platform.machine()} host")
    if requested in ("tcg", "kvm"):
        return Accel(requested, f"--accel {requested} asks for it")
    if requested != "auto":
        raise MkError(f"--accel {requested}: choose tcg, kvm or auto")
    if not Path("/dev/kvm").exists():
        return Accel("tcg", "/dev/kvm is missing")
    if image is None:
        return Accel("tcg", "this format boots no kernel file mk could probe KVM with (choose --accel kvm to try it)")
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    remembered = state_dir / f"kvm-works-{boot_id}"
    if remembered.exists():
        verdict = remembered.read_text().strip()
        note = f" (the answer since this host started, remembered in {remembered}; delete it to probe again)"
    else:
        verdict, note = "kvm" if _kvm_boots(image) else "tcg", ""
        state_dir.mkdir(parents=True, exist_ok=True)
        remembered.write_text(verdict + "\n")
    if verdict == "kvm":
        return Accel("kvm", "a probe booted the kernel under KVM" + note)
    return Accel("tcg", f"/dev/kvm is there, but a probe did not boot the kernel under KVM within "
                        f"{_PROBE_SECONDS:.0f} s{note}")


def check_ports_free(publish: tuple[tuple[int, int], ...]) -> None:
    """Each published host port can be listened on at 127.0.0.1, as QEMU's user networking will."""
    for host, guest in publish:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as QEMU's does: TIME_WAIT is no obstacle
            try:
                probe.bind(("127.0.0.1", host))
            except OSError as e:
                spec = f"--publish {host}:{guest}: port {host}"
                if e.errno == errno.EADDRINUSE:
                    raise MkError(f"{spec} is already in use on 127.0.0.1 (another program, or another mk run, "
                                  "listens there); choose another host port") from None
                if e.errno == errno.EACCES:
                    raise MkError(f"{spec} needs privileges this user lacks (ports below 1024 do); "
                                  "choose a host port from 1024 up") from None
                raise MkError(f"{spec} cannot be listened on at 127.0.0.1: {e.strerror}") from None


def _kvm_boots(image: Path) -> bool:
    """Whether the image's kernel gets as far as printing its banner under KVM, within seconds."""
    probe = [qemu_binary(), "-accel", "kvm", "-m", "256M", "-nographic", "-no-reboot", "-kernel", str(image / "kernel"),
             "-append", "console=ttyS0 panic=-1 rdinit=/nonexistent"]
    try:
        proc = subprocess.Popen(probe, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError:
        return False
    deadline = time.monotonic() + _PROBE_SECONDS
    seen = b""
    try:
        assert proc.stdout is not None
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline and b"Linux version" not in seen:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
                if not chunk:
                    break
                seen += chunk
    finally:
        proc.kill()
        proc.wait()
    return b"Linux version" in seen


def uncompressed_initrd(initrd: Path, scratch: Path, name: str = "initrd.cpio") -> Path:
    """`initrd` with its archives decompressed, written in `scratch`: for a TCG guest, whose
    emulated CPU took 1-2 s to decompress the sshd image's 16 MB of zstd at boot, where the host
    takes a fifth of a second (bench/boot.py); and to compare with the next one (soft reboots)."""
    plain = scratch / name
    with open(initrd, "rb") as source, decompressed(source) as reader, open(plain, "wb") as out:
        shutil.copyfileobj(reader, out, 1 << 20)
    return plain


@dataclass(frozen=True)
class _SoftReboots:
    format: str  # where the next image's files are: its format's, in output_dir
    output_dir: Path
    booted: Booted
    agent: Agent


class VirtualMachine:
    """One QEMU process booting an image.

    In the foreground (`mk run`) the serial console is the terminal, and the terminal's Ctrl-C
    reaches QEMU too. In the background (`mk watch --run`) it runs in its own session, so Ctrl-C
    reaches only mk, which then stops it; and when it boots the kernel itself, its soft-reboot
    agent runs (`format` and `output_dir` say where its next image will be).
    """

    def __init__(self, boot: Boot, files: Mapping[str, Path], options: VmOptions, state_dir: Path,
                 foreground: bool, machine: str = "x86_64", format: str = DEFAULT_FORMAT,
                 output_dir: Path | None = None) -> None:
        for path in files.values():
            if not path.is_file():
                raise MkError(f"{path} is missing; build the image first (mk image)")
        check_ports_free(options.publish)
        for disk in options.disks:
            attach(disk)
        accel = choose_accel(options.accel, files["kernel"].parent if "kernel" in files else None, state_dir,
                             machine)
        print(accel, file=sys.stderr, flush=True)
        # The agent's serial port is the PC's second: QEMU's arm64 board has one UART.
        soft = not foreground and boot.firmware == "direct" and output_dir is not None and machine == "x86_64"
        unpack = (accel.name == "tcg" or soft) and "initrd" in files
        self.scratch = Path(tempfile.mkdtemp(prefix="mk-vm-")) if "firmware_vars" in files or unpack else None
        self.soft: _SoftReboots | None = None
        self.no_soft_reboot = (f"--format {format} boots through firmware, whose kernel mk cannot keep"
                               if boot.firmware != "direct" else f"no soft reboots for {machine} images yet")
        try:
            if self.scratch is not None and "firmware_vars" in files:
                # UEFI firmware writes its variable store: each run gets a fresh copy, never mk-out's file.
                vars_copy = Path(shutil.copy(files["firmware_vars"], self.scratch / "vars.fd"))
                files = {**files, "firmware_vars": vars_copy}
            if self.scratch is not None and unpack:
                files = {**files, "initrd": uncompressed_initrd(files["initrd"], self.scratch)}
            if soft and self.scratch is not None and output_dir is not None:
                booted = Booted.of(files["kernel"], files["cmdline"], files["initrd"])
                self.soft = _SoftReboots(format, output_dir, booted, Agent(self.scratch))
            agent = self.soft.agent if self.soft is not None else None
            self.process = subprocess.Popen(command(boot, files, options, accel.name, machine, agent),
                                            stdin=None if foreground else subprocess.DEVNULL,
                                            start_new_session=not foreground)
            if agent is not None:
                agent.listen()
        except BaseException:
            self._remove_scratch()
            raise

    def wait(self) -> int:
        """Until the VM powers off (or Ctrl-C); QEMU's exit status."""
        try:
            status = self.process.wait()
        except KeyboardInterrupt:
            self.stop(grace=5)
            raise
        self._remove_scratch()
        return status

    def reload(self, info: Provider) -> str | None:
        """Soft-reboots onto the rebuilt image `info`: None once its system runs, else why the VM
        needs a full reboot instead."""
        soft = self.soft
        if soft is None or self.scratch is None:
            return self.no_soft_reboot
        assert isinstance(info, ImageInfo)
        boot = info.boots.get(soft.format)
        if boot is None:
            return f"the image no longer boots from --format {soft.format}"
        files = {role: soft.output_dir / artifact.path for role, artifact in boot.files.items()}
        if (why := soft.booted.kernel_change(files["kernel"], files["cmdline"])) is not None:
            return why
        plain = uncompressed_initrd(files["initrd"], self.scratch, "next.cpio")
        try:
            planned = soft.booted.update(plain)
        except ArchiveError as e:
            return f"the new initrd cannot be compared with the booted one: {e}"
        if isinstance(planned, str):
            return planned
        update, entries = planned
        print("mk watch: restarting the image's userspace in place (soft reboot)", file=sys.stderr, flush=True)
        started = time.monotonic()
        if (why := soft.agent.send(update)) is not None:
            return why
        soft.booted.now(plain, entries)
        print(f"mk watch: soft reboot done in {time.monotonic() - started:.2f} s ({len(update.removed)} paths "
              f"removed, {len(update.written)} written); the image's services are starting", file=sys.stderr,
              flush=True)
        return None

    def stop(self, grace: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _options(values: Mapping[str, object], disk_dir: Path) -> VmOptions:
    publish = values.get("publish") or ()
    disks = values.get("disk") or ()
    ssh_key = values.get("ssh_key")
    assert isinstance(publish, tuple) and isinstance(disks, tuple)
    return VmOptions(mem=str(values.get("mem", "512M")), cpus=int(str(values.get("cpus", 1))),
                     accel=str(values.get("accel", "auto")), publish=tuple(parse_publish(str(p)) for p in publish),
                     ssh_key=read_ssh_key(Path(str(ssh_key))) if ssh_key else None,
                     disks=tuple(parse_disk(str(d), disk_dir) for d in disks))


def check_disks(info: ImageInfo, disks: tuple[Disk, ...]) -> None:
    attached = [d.name for d in disks]
    if unknown := [name for name in attached if name not in info.disks]:
        declared = ", ".join(info.disks) or "none"
        raise MkError(f"--disk {unknown[0]}: the image has no persistent storage on a disk named '{unknown[0]}' "
                      f"(its `persistent` disks: {declared})")
    if twice := sorted({name for name in attached if attached.count(name) > 1}):
        raise MkError(f"--disk {twice[0]}: given twice")
    for name in info.disks:
        if name not in attached:
            print(f"mk: warning: the disk '{name}' is not attached, so what the image keeps on it is not kept and "
                  f"the services writing there are not started (attach it with --disk {name}=SIZE)",
                  file=sys.stderr, flush=True)


def start(info: Provider, output_dir: Path, cache_root: Path, values: Mapping[str, object],
          foreground: bool) -> VirtualMachine:
    assert isinstance(info, ImageInfo)
    name = str(values.get("format") or DEFAULT_FORMAT)
    boot = info.boots.get(name)
    if boot is None:
        bootable = ", ".join(sorted(info.boots))
        raise MkError(f"--format {name}: the image does not boot from that format (it boots from: {bootable}; "
                      "the UEFI formats boot when the image names its `firmware`)")
    files = {role: output_dir / artifact.path for role, artifact in boot.files.items()}
    image_dir = output_dir / Path(info.kernel.path).parent
    disk_dir = Path(str(values.get("disk_dir") or image_dir.with_name(image_dir.name + ".disks")))
    options = _options(values, disk_dir)
    check_disks(info, options.disks)
    if options.ssh_key and not info.ssh_key_user:
        print("mk: warning: --ssh-key is ignored: the image sets no ssh_key_user, so nothing would install the key "
              "at boot (set ssh_key_user, e.g. to \"root\", on the image target)", file=sys.stderr)
        options = replace(options, ssh_key=None)
    qemu_binary(info.machine)
    return VirtualMachine(boot, files, options, cache_root / VM.name, foreground, info.machine, name, output_dir)


def _check() -> None:
    qemu_binary()


RUNNER = Runner(
    provider=ImageInfo,
    options=(
        click.Option(["--publish", "-p"], multiple=True, metavar="HOST:GUEST",
                     help="Forward 127.0.0.1:HOST to the guest's port GUEST."),
        click.Option(["--ssh-key"], type=click.Path(dir_okay=False),
                     help="An OpenSSH public key to authorize at boot for the image's ssh_key_user (never stored "
                          "in the image)."),
        click.Option(["--disk"], multiple=True, metavar="NAME=SIZE",
                     help="Attach the image's persistent disk NAME (see its `persistent`), e.g. data=1G: created "
                          "blank on first use and kept between runs, in --disk-dir."),
        click.Option(["--disk-dir"], type=click.Path(file_okay=False),
                     help="Where the persistent disks are kept (default: mk-out/PKG/IMAGE.disks)."),
        click.Option(["--accel"], type=click.Choice(["auto", "tcg", "kvm"]), default="auto", show_default=True,
                     help="auto: KVM when a probe (once per host boot) shows guests run under it, else TCG."),
        click.Option(["--mem"], default="512M", show_default=True, help="Guest memory."),
        click.Option(["--cpus"], type=click.IntRange(min=1), default=1, show_default=True),
        click.Option(["--format"], metavar="FORMAT",
                     help=f"The image format to build and boot (default {DEFAULT_FORMAT}; also kernel+squashfs, "
                          "raw-efi, ...)."),
    ),
    check=_check,
    start=start,
)
