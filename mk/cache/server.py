"""`mk cache serve`: a small HTTP cache server, for one machine or a small team.

It speaks the same protocol as nginx with WebDAV or bazel-remote: GET, HEAD and PUT on
`.../cas/<digest>` and `.../ac/<key>` (any path prefix is accepted, so the base URL may have
one). Storage uses the local cache's layout (`cas/<2 hex>/<digest>`, `ac/<2 hex>/<key>`).

- A CAS upload is verified while it streams to disk: it must be zstd that decompresses to bytes
  whose blake3 is the digest in the URL, or it is refused (400) and nothing is stored. mk says
  how many bytes that is in `X-Mk-Blob-Size`, and decompression stops the moment it passes that
  (or `max_blob_size`, or 64 MiB for an upload that does not say): a small body of zstd frames
  that would expand to gigabytes is refused at once (400, or 413 when too large to take at all).
- A full disk is answered 507, and the server goes on.
- Action results are stored as sent. The server does not check their signatures: clients do,
  against their own trusted keys, so a server cannot be trusted into anything.
- `token`: every request must carry `Authorization: Bearer TOKEN`, or basic auth whose password
  is TOKEN (the user name is ignored).
- `read_only`: PUT is refused (403).
- `max_size`: when stored entries exceed it, the least recently used (read or written) are
  deleted until they fit.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import errno
import hmac
import os
import re
import shutil
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO, cast

import blake3
import zstandard

from mk.cache.action_cache import MAX_RESULT_BYTES
from mk.cache.cas import CorruptBlobError
from mk.cache.fsutil import atomic_writer
from mk.cache.http import BLOB_SIZE_HEADER

_ROUTE = re.compile(r"^(?:/[^?#]*)?/(cas|ac)/([0-9a-f]{64})$")
# What a blob that does not declare its size may decompress to: checking one costs that much CPU.
_UNDECLARED_BLOB_BYTES = 64 << 20
_CHUNK = 1 << 20
_KINDS = ("cas", "ac")


@dataclass(frozen=True)
class ServerOptions:
    storage: Path
    host: str = "127.0.0.1"
    port: int = 8090
    read_only: bool = False
    token: str | None = None
    max_size: int | None = None  # bytes
    max_blob_size: int = 4 << 30  # bytes of one blob, uncompressed: bounds what checking an upload costs


class Storage:
    """The entries on disk, with their sizes in least-recently-used order."""

    def __init__(self, root: Path, max_size: int | None) -> None:
        self.root = root
        self.max_size = max_size
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.total = 0
        found = []
        for kind in _KINDS:
            for path in (root / kind).glob("*/*"):
                if path.name.startswith(".tmp-"):
                    path.unlink(missing_ok=True)  # a PUT that was cut off by a restart
                    continue
                st = path.stat()
                found.append((st.st_mtime_ns, f"{kind}/{path.name}", st.st_size))
        for _, name, size in sorted(found):
            self._entries[name] = size
            self.total += size

    def path(self, kind: str, name: str) -> Path:
        return self.root / kind / name[:2] / name

    def used(self, kind: str, name: str) -> None:
        with self._lock:
            if f"{kind}/{name}" in self._entries:
                self._entries.move_to_end(f"{kind}/{name}")
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(kind, name))  # the order survives a restart

    def added(self, kind: str, name: str) -> None:
        size = os.stat(self.path(kind, name)).st_size
        with self._lock:
            self.total += size - self._entries.pop(f"{kind}/{name}", 0)
            self._entries[f"{kind}/{name}"] = size
            while self.max_size is not None and self.total > self.max_size and len(self._entries) > 1:
                oldest, old_size = self._entries.popitem(last=False)
                self.total -= old_size
                old_kind, _, old_name = oldest.partition("/")
                self.path(old_kind, old_name).unlink(missing_ok=True)


class CacheServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, options: ServerOptions, handler: type[BaseHTTPRequestHandler] | None = None) -> None:
        self.options = options
        self.storage = Storage(options.storage, options.max_size)
        super().__init__((options.host, options.port), handler or Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients pool their connections
    server_version = "mk-cache"
    timeout = 60  # a client that stops sending frees its thread
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms stall
    server: CacheServer
    _left: int | None = None  # how much of the request's body is still to be read (None: unknown)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: a build makes thousands of requests

    def do_GET(self) -> None:
        self._read(send_body=True)

    def do_HEAD(self) -> None:
        self._read(send_body=False)

    def _route(self) -> tuple[str, str] | None:
        if not self._authorised():
            if self.command == "PUT":
                self._discard_body()
            self._reply(401, b"unauthorised\n", {"WWW-Authenticate": 'Bearer realm="mk"'})
            return None
        match = _ROUTE.match(self.path)
        if match is None:
            if self.command == "PUT":
                self._discard_body()
            self._reply(404, b"not a cache path\n")
            return None
        return match.group(1), match.group(2)

    def _authorised(self) -> bool:
        token = self.server.options.token
        if token is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
            except (binascii.Error, ValueError):
                return False
        else:
            return False
        return hmac.compare_digest(given.encode(), token.encode())

    def _read(self, send_body: bool) -> None:
        route = self._route()
        if route is None:
            return
        kind, name = route
        storage = self.server.storage
        try:
            f = open(storage.path(kind, name), "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            self._reply(404, b"")
            return
        with f:
            # Marked used before the answer goes out: once a client has it, its next request
            # (which may evict the least recently used) must see this entry as just used.
            storage.used(kind, name)
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if send_body:
                shutil.copyfileobj(f, self.wfile, _CHUNK)

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        length = self.headers.get("Content-Length", "") if parsed else ""
        self._left = int(length) if length.isdigit() else None  # the body, not yet read
        return parsed

    def do_PUT(self) -> None:
        route = self._route()
        if route is None:
            return
        kind, name = route
        if self.server.options.read_only:
            self._discard_body()
            self._reply(403, b"this cache is read-only\n")
            return
        size = self._left
        if size is None:
            self.close_connection = True
            self._reply(411, b"Content-Length required\n")
            return
        limit = self.server.options.max_size
        if (kind == "ac" and size > MAX_RESULT_BYTES) or (limit is not None and size > limit):
            self.close_connection = True
            self._reply(413, b"too large\n")
            return
        storage = self.server.storage
        try:
            if kind == "cas":
                bound = self._blob_bound()
                if bound is None:
                    return
                _store_blob(storage.path(kind, name), name, self._body(), *bound)
            else:
                with atomic_writer(storage.path(kind, name)) as out:
                    for chunk in self._body():
                        out.write(chunk)
        except (ConnectionError, TimeoutError, EOFError):
            self.close_connection = True  # the client went away mid-upload; nothing was stored
            return
        except (CorruptBlobError, _TooLarge, OSError) as e:
            self._discard_body()  # (or the client may see a reset instead of this answer)
            self._reply(*_refusal(e))
            return
        storage.added(kind, name)
        self._reply(201, b"")

    def _blob_bound(self) -> tuple[int, bool] | None:
        """How many bytes the blob may decompress to, and whether exactly that many (as declared);
        None when the upload was refused for its declaration."""
        declared = self.headers.get(BLOB_SIZE_HEADER)
        most = self.server.options.max_blob_size
        if declared is None:
            return min(most, _UNDECLARED_BLOB_BYTES), False
        if not declared.isdigit():
            self._discard_body()
            self._reply(400, f"{BLOB_SIZE_HEADER} must be a number of bytes\n".encode())
            return None
        if int(declared) > most:
            self._discard_body()
            self._reply(413, f"a blob of {declared} bytes is larger than this server takes ({most})\n".encode())
            return None
        return int(declared), True

    def _body(self) -> Iterator[bytes]:
        """The rest of the request body, in chunks."""
        while self._left:
            chunk = self.rfile.read(min(_CHUNK, self._left))
            if not chunk:
                raise EOFError("request body cut short")
            self._left -= len(chunk)
            yield chunk

    def _discard_body(self) -> None:
        """Read the rest of a small body, so the connection can carry the next request; a large
        (or unknown) one closes the connection instead."""
        if self._left is not None and self._left <= MAX_RESULT_BYTES:
            with contextlib.suppress(OSError, EOFError):
                for _ in self._body():
                    pass
        else:
            self.close_connection = True

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)


class _TooLarge(Exception):
    def __init__(self, most: int) -> None:
        super().__init__(f"the blob decompresses to more than {most} bytes: send its size in {BLOB_SIZE_HEADER}")


def _store_blob(path: Path, digest: str, chunks: Iterable[bytes], most: int, exactly: bool) -> None:
    """Store zstd-compressed bytes arriving in chunks if they decompress to content named `digest`
    of at most `most` bytes (exactly `most` if `exactly`, the size the client declared).

    Decompression stops as soon as `most` is passed, so what checking an upload costs is bounded
    by its declared size, not by how well a hostile body compresses.
    """
    hasher = blake3.blake3()
    total = 0

    class _Checker:
        def write(self, data: bytes) -> int:
            nonlocal total
            total += len(data)
            if total > most:
                raise CorruptBlobError(digest, path) if exactly else _TooLarge(most)
            hasher.update(data)
            return len(data)

    try:
        with atomic_writer(path) as out:
            with zstandard.ZstdDecompressor().stream_writer(cast(BinaryIO, _Checker()), closefd=False) as checker:
                for chunk in chunks:
                    out.write(chunk)
                    checker.write(chunk)
            if hasher.hexdigest() != digest or (exactly and total != most):
                raise CorruptBlobError(digest, path)
    except zstandard.ZstdError:
        raise CorruptBlobError(digest, path) from None


def _refusal(error: Exception) -> tuple[int, bytes]:
    """The answer to an upload that could not be stored."""
    if isinstance(error, CorruptBlobError):
        return 400, b"the body is not the zstd-compressed blob named in the URL\n"
    if isinstance(error, _TooLarge):
        return 413, f"{error}\n".encode()
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return 507, b"the cache server's disk is full\n"
    return 500, f"cannot store it: {getattr(error, 'strerror', None) or error}\n".encode()


def make_server(options: ServerOptions) -> CacheServer:
    options.storage.mkdir(parents=True, exist_ok=True)
    return CacheServer(options)
