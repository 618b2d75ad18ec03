"""The QEMU runner (`mk run`, `mk watch --run`): boot an image's kernel and initrd in QEMU, with user-mode networking.

The serial console is the terminal. `--accel auto` uses KVM only when a short probe shows that
guests actually run under it (on some machines /dev/kvm exists but guests hang), and the
answer is remembered until the host reboots. Ctrl-C stops the VM; nothing is left running.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import click

from mk.engine.errors import MkError
from mk.engine.registry import Runner
from mk.engine.rule_api import Provider
from mk.rules.init import FW_CFG_KEY
from mk.rules.providers import Boot, ImageInfo

QEMU = "qemu-system-x86_64"
DEFAULT_FORMAT = "kernel+initrd"
_PROBE_SECONDS = 8.0


@dataclass(frozen=True)
class VmOptions:
    mem: str = "512M"
    cpus: int = 1
    accel: str = "auto"  # tcg, kvm or auto
    publish: tuple[tuple[int, int], ...] = ()  # (host port, guest port), on 127.0.0.1
    ssh_key: str | None = None  # an OpenSSH public key, installed at boot for the image's ssh_key_user


def qemu_binary() -> str:
    found = shutil.which(QEMU)
    if found is None:
        raise MkError(f"{QEMU} is not installed; on Debian: apt-get install qemu-system-x86")
    return found


def parse_publish(spec: str) -> tuple[int, int]:
    host, sep, guest = spec.partition(":")
    if not sep or not host.isdigit() or not guest.isdigit() or not (0 < int(host) < 65536 and 0 < int(guest) < 65536):
        raise MkError(f"--publish {spec}: expected HOST:GUEST port numbers, e.g. 2222:22")
    return int(host), int(guest)


def read_ssh_key(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise MkError(f"--ssh-key {path}: {e.strerror}") from None
    if len(lines) != 1 or not lines[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise MkError(f"--ssh-key {path}: expected one OpenSSH public key line (a .pub file), not a private key")
    return lines[0]


def command(boot: Boot, files: Mapping[str, Path], options: VmOptions, accel: str) -> list[str]:
    """QEMU's command line for `boot`, whose files (by role, see `Boot`) are at `files`."""
    forwards = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in options.publish)
    args = [
        qemu_binary(), "-accel", accel, "-m", options.mem, "-smp", str(options.cpus),
        "-nographic", "-no-reboot",
        "-netdev", f"user,id=net0{forwards}", "-device", "virtio-net-pci,netdev=net0",
    ]
    if "disk" in files:
        # -snapshot: the guest's writes go to a temporary file, never into mk-out.
        args += ["-snapshot", "-drive", f"file={files['disk']},if=virtio,format={boot.disk_format}"]
    if "cdrom" in files:
        args += ["-cdrom", str(files["cdrom"]), "-boot", "d"]
    # base64url keeps the key one word (on the kernel command line, or in a fw_cfg string); the
    # image's onboot step decodes it.
    key = base64.urlsafe_b64encode(options.ssh_key.encode()).decode() if options.ssh_key else None
    if boot.firmware == "direct":
        cmdline = files["cmdline"].read_text(encoding="utf-8").strip()
        if key:
            cmdline += f" mk.authorized_key={key}"
        args += ["-kernel", str(files["kernel"]), "-initrd", str(files["initrd"]), "-append", cmdline]
        return args
    if key:
        # The command line is the image's own here (inside the UKI, or on the disk): the key goes
        # through QEMU's firmware configuration, which the guest reads in /sys/firmware/qemu_fw_cfg.
        args += ["-fw_cfg", f"name={FW_CFG_KEY},string={key}"]
    return args


def choose_accel(requested: str, image: Path | None, state_dir: Path) -> str:
    """`image`: the folder holding a kernel to probe KVM with (None: no probe is possible)."""
    if requested in ("tcg", "kvm"):
        return requested
    if requested != "auto":
        raise MkError(f"--accel {requested}: choose tcg, kvm or auto")
    if not Path("/dev/kvm").exists() or image is None:
        return "tcg"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    remembered = state_dir / f"kvm-works-{boot_id}"
    if remembered.exists():
        return remembered.read_text().strip()
    verdict = "kvm" if _kvm_boots(image) else "tcg"
    state_dir.mkdir(parents=True, exist_ok=True)
    remembered.write_text(verdict + "\n")
    return verdict


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


class VirtualMachine:
    """One QEMU process booting an image.

    In the foreground (`mk run`) the serial console is the terminal, and the terminal's Ctrl-C
    reaches QEMU too. In the background (`mk watch --run`) it runs in its own session, so Ctrl-C
    reaches only mk, which then stops it.
    """

    def __init__(self, boot: Boot, files: Mapping[str, Path], options: VmOptions, state_dir: Path,
                 foreground: bool) -> None:
        for path in files.values():
            if not path.is_file():
                raise MkError(f"{path} is missing; build the image first (mk image)")
        accel = choose_accel(options.accel, files["kernel"].parent if "kernel" in files else None, state_dir)
        self.process = subprocess.Popen(command(boot, files, options, accel),
                                        stdin=None if foreground else subprocess.DEVNULL,
                                        start_new_session=not foreground)

    def wait(self) -> int:
        """Until the VM powers off (or Ctrl-C); QEMU's exit status."""
        try:
            return self.process.wait()
        except KeyboardInterrupt:
            self.stop(grace=5)
            raise

    def stop(self, grace: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _options(values: Mapping[str, object]) -> VmOptions:
    publish = values.get("publish") or ()
    ssh_key = values.get("ssh_key")
    assert isinstance(publish, tuple)
    return VmOptions(mem=str(values.get("mem", "512M")), cpus=int(str(values.get("cpus", 1))),
                     accel=str(values.get("accel", "auto")), publish=tuple(parse_publish(str(p)) for p in publish),
                     ssh_key=read_ssh_key(Path(str(ssh_key))) if ssh_key else None)


def start(info: Provider, output_dir: Path, cache_root: Path, values: Mapping[str, object],
          foreground: bool) -> VirtualMachine:
    assert isinstance(info, ImageInfo)
    name = str(values.get("format") or DEFAULT_FORMAT)
    boot = info.boots.get(name)
    if boot is None:
        bootable = ", ".join(sorted(info.boots))
        raise MkError(f"--format {name}: the image does not boot from that format (it boots from: {bootable})")
    files = {role: output_dir / artifact.path for role, artifact in boot.files.items()}
    return VirtualMachine(boot, files, _options(values), cache_root / "vm", foreground)


def _check() -> None:
    qemu_binary()


RUNNER = Runner(
    provider=ImageInfo,
    options=(
        click.Option(["--publish", "-p"], multiple=True, metavar="HOST:GUEST",
                     help="Forward 127.0.0.1:HOST to the guest's port GUEST."),
        click.Option(["--ssh-key"], type=click.Path(dir_okay=False),
                     help="An OpenSSH public key to authorize at boot (never stored in the image)."),
        click.Option(["--accel"], type=click.Choice(["auto", "tcg", "kvm"]), default="auto", show_default=True),
        click.Option(["--mem"], default="512M", show_default=True, help="Guest memory."),
        click.Option(["--cpus"], type=click.IntRange(min=1), default=1, show_default=True),
        click.Option(["--format"], metavar="FORMAT",
                     help=f"The image format to build and boot (default {DEFAULT_FORMAT}; also kernel+squashfs, "
                          "raw-efi, ...)."),
    ),
    check=_check,
    start=start,
)
