"""What the `mk` client and the resident build server share: where a workspace's server lives, how
they frame messages on its Unix socket, and which mk a server is.

Only the standard library is imported here: the client loads this module on every command, and
its start-up time is part of every build's.

Frames are a kind byte, a 4-byte big-endian length and that many bytes. The client sends one
REQUEST (a marshal'ed dict, which costs no import to write: the protocol version, the mk
fingerprint, argv, cwd, environment and whether its stdout and stderr are terminals), then
INTERRUPT frames on Ctrl-C. The server answers with STDOUT and STDERR frames and ends with one
EXIT frame (the exit status as decimal text), or RESTART when it is another mk: it then exits,
and the client starts a server of its own.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import sys
import time

# hashlib would load OpenSSL, which costs the client more than everything else it imports.
from _blake2 import blake2b

PROTOCOL = 1
REQUEST, INTERRUPT = b"R", b"I"
STDOUT, STDERR, EXIT, RESTART = b"1", b"2", b"X", b"V"
RUN_FOLDER = "run"  # in the cache: a folder per workspace's server, holding these
SOCKET = "server.sock"
LOCK = "server.lock"  # held by the living server for its whole life: free means no server
PID = "server.pid"
LOG = "server.log"
STARTING = "starting.lock"  # serialises clients that start a server at the same time
_HEADER = struct.Struct(">cI")


def run_dir(cache_root: str | os.PathLike[str], workspace_root: str | os.PathLike[str]) -> str:
    """The folder of one workspace's server, in the cache it builds with (one server per pair).
    Paths are strings here: pathlib costs the client more to import than all the rest."""
    name = blake2b(os.fspath(workspace_root).encode(), digest_size=8).hexdigest()
    return os.path.join(cache_root, RUN_FOLDER, name)


def fingerprint() -> str:
    """Which mk this is: the interpreter and the stat of every module of the mk package. A client
    and a server that differ here must not talk: the server would build with other code."""
    package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    digest = blake2b(f"{PROTOCOL} {sys.prefix} {sys.version}".encode(), digest_size=16)
    for folder, dirs, files in os.walk(package):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(folder, name))
                digest.update(f"{folder}/{name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def send(sock: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    sock.sendall(_HEADER.pack(kind, len(payload)) + payload)


def receive(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """The next frame, or None when the peer closed the connection (or died)."""
    header = _exactly(sock, _HEADER.size)
    if header is None:
        return None
    kind, length = _HEADER.unpack(header)
    payload = _exactly(sock, length)
    return None if payload is None else (kind, payload)


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        try:
            chunk = sock.recv(size - len(chunks))
        except OSError:  # reset by a dying peer, or shut down
            return None
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def connect(folder: str) -> socket.socket | None:
    """A connection to the server of `folder`, or None when none listens there (no socket file, or
    the stale socket of a server that was killed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(short_path(os.path.join(folder, SOCKET)))
    except OSError as e:
        sock.close()
        if e.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
            return None
        raise
    return sock


def short_path(path: str) -> str:
    """`path` as a socket address: a Unix socket's path may hold only 107 bytes, so a long one is
    reached through /proc/self/fd and a descriptor of its folder (kept open for the process)."""
    if len(path.encode()) < 100:
        return path
    folder = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{folder}/{os.path.basename(path)}"


def server_alive(folder: str) -> bool:
    """Whether a server holds the lock of `folder` (a killed one holds nothing)."""
    try:
        fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def wait_until_gone(folder: str, seconds: float) -> bool:
    """Wait for the server of `folder` to exit; False if it still runs after `seconds`."""
    deadline = time.monotonic() + seconds
    while server_alive(folder):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def lock(path: str) -> int:
    """A descriptor holding an exclusive flock on `path` (made if missing, in a folder only its
    user may enter); closing it releases the lock."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def stop(folder: str, seconds: float = 30.0) -> bool:
    """Stop the server of `folder` and wait for it; False if there was none."""
    if not server_alive(folder):
        return False
    try:
        with open(os.path.join(folder, PID), encoding="ascii") as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 15)  # SIGTERM: it interrupts the command it runs, if any, and exits
        if not wait_until_gone(folder, seconds):
            os.kill(pid, 9)
            wait_until_gone(folder, 5.0)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5.0
    while running(pid) and time.monotonic() < deadline:  # its lock freed, it may still be exiting
        time.sleep(0.01)
    return True


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
