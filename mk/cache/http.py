"""HTTP transport of the remote cache, in Bazel's HTTP cache layout: `<base>/cas/<digest>` and
`<base>/ac/<key>`, read with GET and HEAD, written with PUT (nginx with WebDAV, bazel-remote, or
`mk cache serve` all speak it).

Connections are pooled and reused across threads. Every request has bounded connect and read
timeouts, and only a refused connection is retried (once): a server that hangs or fails costs
one timeout, after which the caller stops asking it. Redirects are not followed, so credentials
never travel to another host. Every error message goes through `redact` first.

urllib3 is imported with this module, which is loaded only when a remote cache is configured.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import BinaryIO

import urllib3

_CHUNK = 1 << 20
BLOB_SIZE_HEADER = "X-Mk-Blob-Size"  # an uploaded blob's uncompressed size (see cache.server)


class TransportError(Exception):
    """The request did not give a usable answer (network, timeout, 5xx, truncated body...)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HttpStore:
    def __init__(
        self, base: str, headers: Mapping[str, str], timeout: float, connections: int,
        redact: Callable[[str], str],
    ) -> None:
        self.base = base.rstrip("/")
        self._redact = redact
        self._headers = {"User-Agent": "mk", **headers}  # (a request's own headers replace the pool's)
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=connections,
            block=False,
            headers=self._headers,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=urllib3.Retry(total=1, connect=1, read=0, status=0, other=0, redirect=0),
        )

    def url(self, kind: str, name: str) -> str:
        return f"{self.base}/{kind}/{name}"

    def _request(self, method: str, kind: str, name: str, **kwargs: object) -> urllib3.BaseHTTPResponse:
        try:
            return self._pool.request(
                method, self.url(kind, name), redirect=False, preload_content=False, **kwargs  # type: ignore[arg-type]
            )
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as e:
            raise TransportError(self._describe(method, kind, name, e)) from None

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
        response = self._request("GET", kind, name)
        finished = False
        try:
            if response.status == 404:
                finished = True
                yield None
                return
            self._check("GET", kind, name, response)
            yield self._chunks("GET", kind, name, response)
            finished = True
        finally:
            _release(response, finished)

    def _chunks(self, method: str, kind: str, name: str, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            yield from response.stream(_CHUNK)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as e:
            raise TransportError(self._describe(method, kind, name, e)) from None

    def head(self, kind: str, name: str) -> bool:
        response = self._request("HEAD", kind, name)
        try:
            if response.status == 404:
                return False
            self._check("HEAD", kind, name, response)
            return True
        finally:
            _release(response, True)  # a HEAD answer has no body

    def put(self, kind: str, name: str, body: bytes | BinaryIO, length: int, blob_size: int | None = None) -> None:
        """Store `length` bytes; a blob's uncompressed `blob_size` lets `mk cache serve` bound what
        checking it costs (other servers ignore the header)."""
        headers = {**self._headers, "Content-Length": str(length), "Content-Type": "application/octet-stream"}
        if blob_size is not None:
            headers[BLOB_SIZE_HEADER] = str(blob_size)
        response = self._request("PUT", kind, name, body=body, headers=headers)
        finished = False
        try:
            self._check("PUT", kind, name, response)
            for _ in self._chunks("PUT", kind, name, response):
                pass
            finished = True
        finally:
            _release(response, finished)

    def close(self) -> None:
        self._pool.clear()


def _release(response: urllib3.BaseHTTPResponse, finished: bool) -> None:
    """Give the connection back for reuse, unless a body was left half read (then close it)."""
    if finished:
        response.drain_conn()  # a small error or 404 body, or nothing
    else:
        response.close()
    response.release_conn()


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
