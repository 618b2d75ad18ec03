"""`mk run`: boot an image's kernel and initrd in QEMU, with user-mode networking.

The serial console is the terminal. `--accel auto` uses KVM only when a short probe shows that
guests actually run under it (on some machines /dev/kvm exists but guests hang), and the
answer is remembered until the host reboots. Ctrl-C stops the VM; nothing is left running.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mk.engine.errors import MkError

QEMU = "qemu-system-x86_64"
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


def command(image: Path, options: VmOptions, accel: str) -> list[str]:
    cmdline = (image / "cmdline").read_text(encoding="utf-8").strip()
    if options.ssh_key:
        # base64url keeps the key one word on the kernel command line; the image's onboot decodes it.
        encoded = base64.urlsafe_b64encode(options.ssh_key.encode()).decode()
        cmdline += f" mk.authorized_key={encoded}"
    forwards = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in options.publish)
    return [
        qemu_binary(), "-accel", accel, "-m", options.mem, "-smp", str(options.cpus),
        "-nographic", "-no-reboot",
        "-kernel", str(image / "kernel"), "-initrd", str(image / "initrd.img"), "-append", cmdline,
        "-netdev", f"user,id=net0{forwards}", "-device", "virtio-net-pci,netdev=net0",
    ]


def choose_accel(requested: str, image: Path, state_dir: Path) -> str:
    if requested in ("tcg", "kvm"):
        return requested
    if requested != "auto":
        raise MkError(f"--accel {requested}: choose tcg, kvm or auto")
    if not Path("/dev/kvm").exists():
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


class Rebooter:
    """Keeps one VM of an image running in the background; `reboot()` replaces it (mk watch --run)."""

    def __init__(self, image: Path, options: VmOptions, state_dir: Path) -> None:
        self.image, self.options, self.state_dir = image, options, state_dir
        self.process: subprocess.Popen[bytes] | None = None

    def reboot(self) -> None:
        self.stop()
        accel = choose_accel(self.options.accel, self.image, self.state_dir)
        # Its own session: the terminal's Ctrl-C reaches mk, which then stops the VM itself.
        self.process = subprocess.Popen(command(self.image, self.options, accel), stdin=subprocess.DEVNULL,
                                        start_new_session=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def boot(image: Path, options: VmOptions, state_dir: Path) -> int:
    """Run the VM in the foreground until it powers off (or Ctrl-C); returns QEMU's exit status."""
    for name in ("kernel", "initrd.img", "cmdline"):
        if not (image / name).is_file():
            raise MkError(f"{image / name} is missing; build the image first (mk image)")
    accel = choose_accel(options.accel, image, state_dir)
    proc = subprocess.Popen(command(image, options, accel))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # The terminal sent SIGINT to QEMU too, and it stops on it; make sure, then report.
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
