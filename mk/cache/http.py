"""HTTP transport of the remote cache, in Bazel's HTTP cache layout: `<base>/cas/<digest>` and
`<base>/ac/<key>`, read with GET and HEAD, written with PUT (nginx with WebDAV, bazel-remote, or
`mk cache serve` all speak it).

Connections are pooled and reused across threads. Every request has bounded connect and read
timeouts, and only a refused connection is retried (once): a server that hangs or fails costs
one timeout, after which the caller stops asking it. Redirects are not followed, so credentials
never travel to another host. Every error message goes through `redact` first.

Every request also has a total deadline: twice `timeout` (what connecting and then waiting for
the answer may take), plus one second for each `_MIN_RATE` bytes of its body. A server that
trickles bytes resets every read timeout and would otherwise hold a request (and the build, and
Ctrl-C) for as long as it likes. A watchdog thread enforces the
deadline by shutting the connection's socket down, which wakes the thread blocked on it;
`abort()` does the same to every request under way, and refuses new ones.

It also makes plain downloads (`get_chunks`: Debian archives), so mk has one HTTP client.
urllib3 is imported with this module, which is loaded only when something goes over the network.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, BinaryIO

import urllib3

from mk.cache.cache_transport import TransportError

_CHUNK = 1 << 20
BLOB_SIZE_HEADER = "X-Mk-Blob-Size"  # an uploaded blob's uncompressed size (see cache.server)
_MIN_RATE = 256 << 10  # bytes a second: a transfer slower than this on average is cut
_WATCH_EVERY = 0.1  # seconds between the watchdog's rounds
_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


class _Transfer:
    """One request, from sending it to the end of its answer, and when it must be done by."""

    def __init__(self, timeout: float) -> None:
        self.started = time.monotonic()
        self.budget = 2 * timeout  # connecting, then the answer's first byte: the timeouts allow that
        self.deadline = self.started + self.budget
        self.connection: urllib3.connection.HTTPConnection | None = None  # once the request is sent
        self.cut_because: str | None = None

    def allow(self, size: int) -> None:
        """Move the deadline on for a body of `size` bytes."""
        self.deadline = max(self.deadline, self.started + self.budget + size / _MIN_RATE)

    def cut(self, reason: str) -> None:
        """Shut the connection down: the thread waiting on it gets an error at once."""
        self.cut_because = self.cut_because or reason
        sock = self.connection.sock if self.connection is not None else None
        if isinstance(sock, socket.socket):
            with suppress(OSError):
                # socket.socket's own shutdown: a TLS socket's would also drop its state while
                # another thread is using it.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


# The transfer each thread is making, for its connection to register with (urllib3 picks the
# connection deep inside a request).
_current = threading.local()


def _sending(connection: urllib3.connection.HTTPConnection) -> None:
    transfer: _Transfer | None = getattr(_current, "transfer", None)
    if transfer is not None:
        transfer.connection = connection


class _Connection(urllib3.connection.HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _sending(self)
        super().request(*args, **kwargs)


class _TLSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _sending(self)
        super().request(*args, **kwargs)


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class HttpStore:
    def __init__(
        self, base: str, headers: Mapping[str, str], timeout: float, connections: int,
        redact: Callable[[str], str], stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """`stop` is asked several times a second while requests are under way: when it says
        True, they are all cut (Ctrl-C)."""
        self.base = base.rstrip("/")
        self._redact = redact
        self._timeout = timeout
        self._stop = stop
        self._headers = {"User-Agent": "mk", **headers}  # (a request's own headers replace the pool's)
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=connections,
            block=False,
            headers=self._headers,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=urllib3.Retry(total=1, connect=1, read=0, status=0, other=0, redirect=0),
        )
        self._pool.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
        self._lock = threading.Lock()
        self._transfers: set[_Transfer] = set()
        self._aborted: str | None = None
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None

    def url(self, kind: str, name: str) -> str:
        return f"{self.base}/{kind}/{name}"

    @contextmanager
    def _exchange(
        self, method: str, kind: str, name: str, size: int = 0, **kwargs: object
    ) -> Iterator[tuple[urllib3.BaseHTTPResponse, _Transfer]]:
        """Send a request (with a body of `size` bytes) and yield its answer, all under one
        deadline. Afterwards the connection goes back to the pool, its answer read to the end,
        unless the block failed (then it is closed)."""
        transfer = self._begin(method, kind, name, size)
        response: urllib3.BaseHTTPResponse | None = None
        finished = False
        try:
            try:
                response = self._pool.request(
                    method, self.url(kind, name), redirect=False, preload_content=False, **kwargs  # type: ignore[arg-type]
                )
            except _ERRORS as e:
                raise TransportError(self._describe(method, kind, name, transfer.cut_because or e)) from None
            yield response, transfer
            finished = True
        finally:
            if response is not None:
                if finished:
                    response.drain_conn()  # a small error or 404 body, or nothing
                else:
                    response.close()  # a body left half read
            self._end(transfer)
            if response is not None:
                response.release_conn()  # only now: the watchdog no longer knows this connection

    def _begin(self, method: str, kind: str, name: str, size: int) -> _Transfer:
        transfer = _Transfer(self._timeout)
        transfer.allow(size)
        with self._lock:
            if self._aborted is not None:
                raise TransportError(self._describe(method, kind, name, self._aborted))
            self._transfers.add(transfer)
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="mk-remote-watchdog", daemon=True)
                self._watchdog.start()
        _current.transfer = transfer
        return transfer

    def _end(self, transfer: _Transfer) -> None:
        _current.transfer = None
        with self._lock:
            self._transfers.discard(transfer)

    def _watch(self) -> None:
        """Cut each transfer past its deadline, and all of them once aborted or told to stop.
        A cut is repeated every round: a connection may only have been made since. Cuts happen
        under the lock that `_end` takes, so a connection is never cut once back in the pool."""
        while not self._closed.wait(_WATCH_EVERY):
            if self._aborted is None and self._stop():
                self.abort("interrupted")
            now = time.monotonic()
            with self._lock:
                for transfer in self._transfers:
                    if self._aborted is not None:
                        transfer.cut(self._aborted)
                    elif now > transfer.deadline:
                        transfer.cut(f"too slow (not done within {transfer.deadline - transfer.started:.1f} s)")

    def abort(self, reason: str) -> None:
        """Cut every request under way and refuse new ones: the caller has given up on the server."""
        with self._lock:
            self._aborted = self._aborted or reason
            for transfer in self._transfers:
                transfer.cut(reason)

    def _describe(self, method: str, kind: str, name: str, error: BaseException | str) -> str:
        reason = error if isinstance(error, str) else _reason(error)
        return self._redact(f"{method} /{kind}/{name[:16]}…: {reason}")

    def _check(self, method: str, kind: str, name: str, response: urllib3.BaseHTTPResponse) -> None:
        if not 200 <= response.status < 300:
            raise TransportError(self._describe(method, kind, name, f"HTTP {response.status}"), response.status)

    def get(self, kind: str, name: str, limit: int) -> bytes | None:
        """The body, or None if the server does not have it (404)."""
        with self.stream(kind, name) as chunks:
            if chunks is None:
                return None
            data = bytearray()
            for chunk in chunks:
                data += chunk
                if len(data) > limit:
                    raise TransportError(self._describe("GET", kind, name, f"body larger than {limit} bytes"))
            return bytes(data)

    @contextmanager
    def stream(self, kind: str, name: str) -> Iterator[Iterator[bytes] | None]:
        """The body in chunks, or None on 404. A truncated body raises TransportError mid-way."""
        with self._exchange("GET", kind, name) as (response, transfer):
            if response.status == 404:
                yield None
                return
            self._check("GET", kind, name, response)
            transfer.allow(response.length_remaining or 0)  # (from Content-Length)
            yield self._chunks("GET", kind, name, response, transfer)

    def _chunks(
        self, method: str, kind: str, name: str, response: urllib3.BaseHTTPResponse, transfer: _Transfer
    ) -> Iterator[bytes]:
        received = 0
        try:
            for chunk in response.stream(_CHUNK):
                received += len(chunk)
                transfer.allow(received)  # (a body of unknown length)
                yield chunk
        except _ERRORS as e:
            raise TransportError(self._describe(method, kind, name, transfer.cut_because or e)) from None

    def head(self, kind: str, name: str) -> bool:
        with self._exchange("HEAD", kind, name) as (response, _):
            if response.status == 404:
                return False
            self._check("HEAD", kind, name, response)
            return True

    def put(self, kind: str, name: str, body: bytes | BinaryIO, length: int, blob_size: int | None = None) -> None:
        """Store `length` bytes; a blob's uncompressed `blob_size` lets `mk cache serve` bound what
        checking it costs (other servers ignore the header)."""
        headers = {**self._headers, "Content-Length": str(length), "Content-Type": "application/octet-stream"}
        if blob_size is not None:
            headers[BLOB_SIZE_HEADER] = str(blob_size)
        with self._exchange("PUT", kind, name, length, body=body, headers=headers) as (response, transfer):
            self._check("PUT", kind, name, response)
            for _ in self._chunks("PUT", kind, name, response, transfer):
                pass

    def close(self) -> None:
        self._closed.set()
        self._pool.clear()


def _reason(error: BaseException) -> str:
    """A short cause: urllib3 nests the useful part (timeout, refused) inside MaxRetryError."""
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        error = error.reason
    if isinstance(error, urllib3.exceptions.NewConnectionError):  # (a subclass of ConnectTimeoutError)
        return "connection failed" + (f" ({error.__context__})" if error.__context__ else "")
    if isinstance(error, urllib3.exceptions.ReadTimeoutError | urllib3.exceptions.ConnectTimeoutError):
        return "timed out"
    if isinstance(error, urllib3.exceptions.ProtocolError):
        return f"connection broken ({error.args[0] if error.args else error})"
    return f"{type(error).__name__}: {error}"


# ---- plain downloads (Debian archives): the same client, without the cache's layout ------------

_DOWNLOAD_CONNECT, _DOWNLOAD_READ = 10.0, 60.0
_DOWNLOAD_REDIRECTS = 5
_downloads: urllib3.PoolManager | None = None
_downloads_lock = threading.Lock()


def get_chunks(url: str, shown: str) -> Iterator[bytes]:
    """The body of `url`, in chunks, for a fetch whose bytes the caller checks against a known
    digest. `shown` is the URL as messages may show it (without credentials). Raises
    TransportError, whose status is 404 when the file is not there."""
    global _downloads
    with _downloads_lock:  # one pool per process, made on first use
        if _downloads is None:
            _downloads = urllib3.PoolManager(maxsize=8, headers={"User-Agent": "mk"})
        pool = _downloads
    try:
        # Redirects are followed (a snapshot archive sends an inexact time to the snapshot it has;
        # mirrors move to https): the caller checks every byte, wherever it came from. Nothing
        # else is retried here; the caller decides.
        response = pool.request("GET", url, preload_content=False,
                                retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0,
                                                      redirect=_DOWNLOAD_REDIRECTS, raise_on_redirect=True),
                                timeout=urllib3.Timeout(connect=_DOWNLOAD_CONNECT, read=_DOWNLOAD_READ))
    except _ERRORS as e:
        raise TransportError(f"{shown}: {_reason(e)}") from None
    try:
        if response.status != 200:
            reason = "404 Not Found" if response.status == 404 else f"HTTP {response.status}"
            raise TransportError(f"{shown}: {reason}", response.status)
        expected = response.headers.get("Content-Length")
        total = 0
        try:
            for chunk in response.stream(_CHUNK, decode_content=False):
                total += len(chunk)
                yield chunk
        except _ERRORS as e:
            raise TransportError(f"{shown}: connection lost after {total} bytes ({type(e).__name__})") from None
        if expected is not None and total != int(expected):
            raise TransportError(f"{shown}: connection closed after {total} of {expected} bytes")
    finally:
        response.release_conn()
