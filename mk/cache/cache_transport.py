"""How the remote cache (see `remote`) moves signed results and blobs: the four operations it
needs, whatever the server speaks.

- `HttpCache`: Bazel's HTTP cache layout (`http`): results under `ac/<key>`, blobs under
  `cas/<blake3>` in mk's compressed form (see `cas.compressed`).
- `reapi.cache.ReapiCache`: a REAPI server's ActionCache and CAS over gRPC (Buildbarn,
  BuildBuddy, bazel-remote --grpc, BuildGrid); blobs as they are, named by SHA-256.

Every operation raises `TransportError` when the server gave no usable answer (the remote cache
then stops asking it), and `CorruptBlobError` when the bytes were not those of their name: a
local blob that was about to be uploaded (the store removed it), or a downloaded one (never
stored).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mk.cache.cas import ContentStore
    from mk.cache.http import HttpStore


class TransportError(Exception):
    """The request did not give a usable answer (network, timeout, 5xx, truncated body...)."""

    def __init__(self, message: str, status: int | None = None, refuses_uploads: bool | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, when there was one
        # A server that will not take what was sent (a read-only one, a token that may only read, a
        # full disk), though it may well serve reads: by default, what the HTTP status says.
        self.refuses_uploads = status in (401, 403, 405, 507) if refuses_uploads is None else refuses_uploads


class CacheTransport(Protocol):
    def get_result(self, key: str, limit: int) -> bytes | None:
        """The signed result stored under `key` (at most `limit` bytes), or None if there is none."""

    def put_result(self, key: str, envelope: bytes) -> None:
        """Store a signed result under `key`; only after every blob it names is stored."""

    def put_blob(self, digest: str, store: ContentStore, ask_first: bool) -> int | None:
        """Upload local blob `digest` (verified as it is read); the bytes sent, or None when the
        server had it. `ask_first`: asking costs less than sending it blindly."""

    def get_blob(self, digest: str, store: ContentStore) -> int | None:
        """Download blob `digest` into `store`, verified; its size, or None when the server lacks it."""

    def abort(self, reason: str) -> None:
        """Cut every request under way and refuse new ones."""

    def close(self) -> None: ...


class HttpCache:
    def __init__(self, http: HttpStore) -> None:
        self.http = http

    def get_result(self, key: str, limit: int) -> bytes | None:
        return self.http.get("ac", key, limit)

    def put_result(self, key: str, envelope: bytes) -> None:
        self.http.put("ac", key, envelope, len(envelope))

    def put_blob(self, digest: str, store: ContentStore, ask_first: bool) -> int | None:
        import os

        if ask_first and self.http.head("cas", digest):
            return None
        with store.compressed(digest) as (body, blob_size):  # verified, or raises
            size = os.fstat(body.fileno()).st_size
            self.http.put("cas", digest, body, size, blob_size)
        return size

    def get_blob(self, digest: str, store: ContentStore) -> int | None:
        with self.http.stream("cas", digest) as chunks:
            return None if chunks is None else store.put_compressed_stream(digest, chunks)

    def abort(self, reason: str) -> None:
        self.http.abort(reason)

    def close(self) -> None:
        self.http.close()
