"""The host's end of a VM's soft-reboot agent (`mk watch --run`, see mk/rules/init.py): the serial
port and the update drive QEMU gives the guest, and the exchange of one soft reboot.

Both live in the VM's scratch folder (mode 0700): no other local user can reach them, as they
could a TCP port.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from pathlib import Path

from mk.rules.init import UPDATE_SERIAL
from mk.rules.soft_reboot import Update

UPDATE_DRIVE_BYTES = 256 << 20  # sparse: only an update's blocks take room
_CONNECT_SECONDS = 30.0  # QEMU makes its socket as it starts
READY_SECONDS = 2.0  # how long a save waits for an agent still booting
TOOK_SECONDS = 5.0
DONE_SECONDS = 60.0  # removing, unpacking and starting the system again


class Agent:
    def __init__(self, scratch: Path) -> None:
        self.socket_path = scratch / "agent.sock"
        self.drive = scratch / "update.img"
        with open(self.drive, "xb") as f:
            f.truncate(UPDATE_DRIVE_BYTES)
        self._lines: queue.Queue[str] = queue.Queue()
        self._socket: socket.socket | None = None
        self._connected = threading.Event()
        self.state = "booting"  # then "ready" or "unable"
        self._seq = 0

    def qemu_args(self) -> list[str]:
        """The second serial port (the guest's ttyS1) on a socket QEMU listens on, and the drive.
        (Naming a second port makes QEMU drop its default first one: the console is named too.)"""
        return ["-serial", "mon:stdio",
                "-chardev", f"socket,id=mk-agent,path={self.socket_path},server=on,wait=off",
                "-serial", "chardev:mk-agent",
                "-drive", f"file={self.drive},if=none,id=mk-update,format=raw",
                "-device", f"virtio-blk-pci,drive=mk-update,serial={UPDATE_SERIAL}"]

    def listen(self) -> None:
        """Connects (in the background) once QEMU has made its socket, and collects the agent's lines."""
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        deadline = time.monotonic() + _CONNECT_SECONDS
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.socket_path))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
        self._socket = sock
        self._connected.set()
        with contextlib.suppress(OSError), sock.makefile("rb") as lines:
            for line in lines:
                self._lines.put(line.decode(errors="replace").strip())

    def _next(self, deadline: float) -> str | None:
        try:
            return self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def _until(self, wanted: set[str], seconds: float) -> str | None:
        """The first line among `wanted` within `seconds` (None if none came); keeps up `state`."""
        deadline = time.monotonic() + seconds
        while (line := self._next(deadline)) is not None:
            if line in ("mk-agent ready", "mk-agent unable"):
                self.state = line.removeprefix("mk-agent ")
            if line in wanted:
                return line
        return None

    def send(self, update: Update) -> str | None:
        """Soft reboot onto `update`: None once the agent has started the new system, else why not."""
        if self.state == "booting":
            self._until({"mk-agent ready", "mk-agent unable"}, READY_SECONDS)
        while self._until({"mk-agent ready", "mk-agent unable"}, 0) is not None:  # the latest word counts
            pass
        if self.state == "unable":
            return "the image cannot soft-reboot (its kernel rule needs the overlay and virtio_blk modules)"
        if self.state != "ready" or self._socket is None:
            return f"the VM's soft-reboot agent did not answer within {READY_SECONDS:.0f} s (still booting?)"
        payload, removed, archive = update.payload()
        if len(payload) > UPDATE_DRIVE_BYTES:
            return (f"the update is {len(payload) >> 20} MB, more than the update drive's "
                    f"{UPDATE_DRIVE_BYTES >> 20} MB")
        fd = os.open(self.drive, os.O_WRONLY)
        try:
            os.pwrite(fd, payload, 0)
        finally:
            os.close(fd)
        self._seq += 1
        seq = self._seq
        self.state = "booting"
        try:
            self._socket.sendall(f"mk-update {seq} {removed} {archive}\n".encode())
        except OSError as e:
            return f"the VM's soft-reboot agent cannot be reached ({e.strerror})"
        if self._until({f"mk-agent took {seq}"}, TOOK_SECONDS) is None:
            return f"the VM's soft-reboot agent did not take the update within {TOOK_SECONDS:.0f} s"
        answer = self._until({f"mk-agent done {seq}", f"mk-agent failed {seq}"}, DONE_SECONDS)
        if answer is None:
            return f"the VM's soft-reboot agent did not restart the system within {DONE_SECONDS:.0f} s"
        if answer.startswith("mk-agent failed"):
            return "the VM's soft-reboot agent could not apply the update"
        self.state = "ready"
        return None
