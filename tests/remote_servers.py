"""Cache servers for the remote-cache tests, all on 127.0.0.1 and all cleaned up by their owner.

- `serve_process`: the real `mk cache serve`, in a subprocess.
- `nginx_server`: a real nginx with WebDAV PUT, with its own config and prefix under tmp_path.
- `FaultyServer`: `mk cache serve`'s handler in a thread of the test, which can be switched to
  misbehave: answer 500, hang, truncate bodies, send wrong bytes, die after N requests, or
  trickle its answers (to every request, or to PUTs only) one byte every half second.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import zstandard
from conftest import MK, require

from mk.cache.server import CacheServer, Handler, ServerOptions

START_TIMEOUT = 15.0


@dataclass
class Remote:
    """A running server: its base URL and where a given entry lives on its disk."""

    url: str
    storage: Path
    sharded: bool  # mk's layout (`cas/ab/abcd...`) or nginx's flat one (`cas/abcd...`)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def file(self, kind: str, name: str) -> Path:
        if self.sharded:
            return self.storage / kind / name[:2] / name
        return self.storage / kind / name

    def names(self, kind: str) -> set[str]:
        root = self.storage / kind
        if not root.is_dir():
            return set()
        return {p.name for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


def http_request(url: str, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request to the server at `url` (the path goes after the URL's own): (status, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request(method, f"{parts.path}{path}", body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the server did not listen on port {port} within {START_TIMEOUT} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def serve_process(storage: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Remote]:
    port = free_port()
    log = storage.parent / f"{storage.name}-serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [MK, "cache", "serve", str(storage), "--port", str(port), *args],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("MK_")}, **(env or {})},
        )
    try:
        _wait_listening(port, process, log)
        yield Remote(f"http://127.0.0.1:{port}", storage, sharded=True, process=process, log=log)
    finally:
        _stop(process)


_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {prefix}/store;
        client_max_body_size 0;
        location /cache/ {{{put_fault}
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(prefix: Path, put_status: int | None = None) -> Iterator[Remote]:
    """nginx serving `<prefix>/store/cache/` at `/cache/` (a base URL with a path, as in real life);
    with `put_status`, it answers every PUT with that status instead."""
    binary = require("nginx", also_in="/usr/sbin:/usr/local/sbin:/sbin")
    (prefix / "store" / "cache").mkdir(parents=True)
    (prefix / "temp").mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    put_fault = f"\n            if ($request_method = PUT) {{ return {put_status}; }}" if put_status else ""
    conf.write_text(_NGINX_CONF.format(prefix=prefix, port=port, put_fault=put_fault))
    log = prefix / "error.log"
    with open(prefix / "stdout.log", "wb") as out:
        process = subprocess.Popen(
            [binary, "-p", str(prefix), "-e", str(log), "-c", str(conf)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        _wait_listening(port, process, prefix / "stdout.log")
        yield Remote(f"http://127.0.0.1:{port}/cache", prefix / "store" / "cache", sharded=False,
                     process=process, log=prefix / "access.log")
    finally:
        _stop(process)


# ---- a server that misbehaves on demand -------------------------------------------------------


class _FaultyHandler(Handler):
    server: FaultyServer

    def _fault(self) -> bool:
        """Misbehave as told; True when the request was dealt with here."""
        faults = self.server.faults
        with faults.lock:
            faults.requests.append(f"{self.command} {self.path}")
            count = len(faults.requests)
        if faults.mode == "500":
            if self.command == "PUT":
                self._discard_body()
            self._reply(500, b"broken\n")
            return True
        if faults.mode == "hang":
            faults.release.wait(30)
            self.close_connection = True
            return True
        if faults.mode == "trickle" or (faults.mode == "trickle-put" and self.command == "PUT"):
            self._trickle()
            return True
        if faults.mode == "die" and count > faults.die_after:
            self.close_connection = True  # no answer, on this connection or any other
            if not faults.dead.is_set():
                faults.dead.set()
                threading.Thread(target=self.server.die, daemon=True).start()
            return True
        if self.command == "GET" and "/cas/" in self.path and faults.mode in ("truncate", "wrong"):
            route = self._route()
            if route is None:
                return True
            path = self.server.storage.path(*route)
            if not path.is_file():
                self._reply(404, b"")
                return True
            data = path.read_bytes()
            if faults.mode == "wrong":  # a valid blob, of other content
                data = zstandard.ZstdCompressor().compress(b"not what you asked for\n")
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if faults.mode == "truncate" else data)
            self.close_connection = True
            return True
        return False

    def _trickle(self) -> None:
        """Answer as `mk cache serve` would (but store nothing), one byte every half second: each
        byte comes well within any read timeout, so only a deadline on the whole request ends it."""
        if self.command == "PUT":
            self._discard_body()
            answer = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
        else:
            kind, name = self.path.rsplit("/", 2)[-2:]
            path = self.server.storage.path(kind, name)
            body = path.read_bytes() if path.is_file() else b""
            status = b"200 OK" if path.is_file() else b"404 Not Found"
            answer = b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n" % (status, len(body))
            answer += body if self.command == "GET" else b""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client gave up
            for byte in answer:
                if self.server.faults.release.wait(0.5):
                    return
                self.wfile.write(bytes([byte]))

    def do_GET(self) -> None:
        if not self._fault():
            super().do_GET()

    def do_HEAD(self) -> None:
        if not self._fault():
            super().do_HEAD()

    def do_PUT(self) -> None:
        if not self._fault():
            super().do_PUT()


@dataclass
class Faults:
    mode: str = "ok"  # ok, 500, hang, truncate, wrong, die, trickle, trickle-put
    die_after: int = 0  # with mode "die": requests answered before the server goes away
    requests: list[str] = field(default_factory=list)  # "GET /cas/..." for each request
    release: threading.Event = field(default_factory=threading.Event)  # ends hangs
    dead: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FaultyServer(CacheServer):
    def __init__(self, storage: Path) -> None:
        self.faults = Faults()
        super().__init__(ServerOptions(storage, port=0), _FaultyHandler)

    def die(self) -> None:
        self.shutdown()
        self.server_close()  # new connections are refused from now on


@contextlib.contextmanager
def faulty_server(storage: Path) -> Iterator[tuple[Remote, Faults]]:
    storage.mkdir(parents=True, exist_ok=True)
    server = FaultyServer(storage)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Remote(server.url, storage, sharded=True), server.faults
    finally:
        server.faults.release.set()
        if not server.faults.dead.is_set():
            server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ---- a disk that fills up -------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "64k") mounted at `path`: a real disk that fills up (ENOSPC).

    Mounting needs root, which CI has; elsewhere the test is skipped."""
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs at {path}: {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)  # lazy: even while a server still has it open
