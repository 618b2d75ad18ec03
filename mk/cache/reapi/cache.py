"""The remote cache on a REAPI server's ActionCache and CAS (`remote_cache = "grpc://host:port"`):
Buildbarn, BuildBuddy, `bazel-remote --grpc` or BuildGrid as mk's shared cache, without execution.

The server knows blobs by SHA-256 and results by action digest; mk names both by blake3, and
trusts a result only when a trusted key signed it (see `signing`). So:

- A signed result is stored as an ActionResult whose execution metadata carries mk's signed
  envelope (an `Any` of type `SIGNED_RESULT`), under a digest no Action has: the SHA-256 of mk's
  action key behind a label (`result_digest`). Anything else found there is no result.
- A blob is stored as it is (so any REAPI tool can read it), under its SHA-256, and found by its
  blake3 name through a second ActionResult (`blob_digest`) that names it as its one output file.
  That entry is not signed and need not be: what it leads to is checked against the SHA-256 as it
  streams in, then against the blake3 name it was asked by, and other bytes are never stored
  under that name.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mk.cache.cache_transport import TransportError
from mk.cache.cas import ContentStore, CorruptBlobError
from mk.cache.reapi.cas_client import MissingRemoteBlob, RemoteCas, RemoteError, WrongRemoteBytes, local_blob, rpc_error
from mk.cache.reapi.digests import DigestIndex, Sha256
from mk.cache.reapi.endpoint import Endpoint

if TYPE_CHECKING:
    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

SIGNED_RESULT = "mk/mk.SignedResult"  # the type URL of the `Any` holding a signed envelope
_BLOB_FILE = "blob"  # the one output file of a blob's entry
_WATCH_EVERY = 0.1  # seconds between two looks at whether the build was interrupted
# What a server answers that will not take what was sent, though it may serve reads: no right to
# write, a cache that takes no results, a full server.
_REFUSALS = ("UNAUTHENTICATED", "PERMISSION_DENIED", "UNIMPLEMENTED", "RESOURCE_EXHAUSTED")


def result_digest(key: str) -> re_pb2.Digest:
    """Where mk's signed result for action `key` is kept in the server's ActionCache."""
    return _labelled(b"mk-signed-result", key)


def blob_digest(blake3: str) -> re_pb2.Digest:
    """Where the SHA-256 of the blob named `blake3` is kept in the server's ActionCache."""
    return _labelled(b"mk-blob", blake3)


def _labelled(label: bytes, name: str) -> re_pb2.Digest:
    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

    return re_pb2.Digest(hash=hashlib.sha256(label + b"\0" + name.encode()).hexdigest(), size_bytes=len(name))


class ReapiCache:
    """A `CacheTransport` (see cache_transport) on a REAPI server."""

    def __init__(self, endpoint: Endpoint, cache_root: Path, timeout: float,
                 stop: Callable[[], bool] = lambda: False) -> None:
        """`stop` is asked several times a second: when it says True (Ctrl-C), every call under way
        is cut."""
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

        self.endpoint = endpoint
        self._timeout = timeout
        self._channel = endpoint.channel()
        self._ac = re_grpc.ActionCacheStub(self._channel)
        self._cas = RemoteCas(endpoint, self._channel, timeout)
        self._digests = DigestIndex(cache_root)
        self._aborted: str | None = None
        self._closed = threading.Event()
        self._stop = stop
        threading.Thread(target=self._watch, name="mk-remote-watchdog", daemon=True).start()

    # ---- results ----------------------------------------------------------------------------

    def get_result(self, key: str, limit: int) -> bytes | None:
        found = self._get(result_digest(key), "a result")
        envelopes = [m.value for m in found.execution_metadata.auxiliary_metadata
                     if m.type_url == SIGNED_RESULT] if found is not None else []
        if len(envelopes) != 1:
            return None  # not an entry mk wrote: as good as none
        if len(envelopes[0]) > limit:
            raise TransportError(self._said(f"a result of {len(envelopes[0])} bytes (at most {limit} are read)"))
        return bytes(envelopes[0])

    def put_result(self, key: str, envelope: bytes) -> None:
        from google.protobuf import any_pb2

        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

        metadata = re_pb2.ExecutedActionMetadata(auxiliary_metadata=[any_pb2.Any(type_url=SIGNED_RESULT,
                                                                                   value=envelope)])
        self._put(result_digest(key), re_pb2.ActionResult(execution_metadata=metadata), "a result")

    # ---- blobs ------------------------------------------------------------------------------

    def put_blob(self, digest: str, store: ContentStore, ask_first: bool) -> int | None:
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

        sha256 = self._digests.sha256(digest, store)  # (reads the blob, verified, when not known)
        if ask_first and self._sha256_of(digest) == sha256 and not self._guard(self._cas.find_missing, [sha256]):
            return None
        sent = self._guard(self._cas.upload_missing, {sha256: local_blob(store, digest)})
        entry = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(
            path=_BLOB_FILE, digest=re_pb2.Digest(hash=sha256.hash, size_bytes=sha256.size))])
        self._put(blob_digest(digest), entry, "a blob's entry")
        return sha256.size if sent else None

    def get_blob(self, digest: str, store: ContentStore) -> int | None:
        sha256 = self._sha256_of(digest)
        if sha256 is None:
            return None
        try:
            found = self._guard(self._cas.download, sha256, store)
        except MissingRemoteBlob:
            return None
        except WrongRemoteBytes as e:
            raise WrongRemoteBlob(digest, str(e)) from None
        if found != digest:  # bytes of another blob, which the store keeps under their own name
            raise WrongRemoteBlob(digest, self._said(f"its entry for blob {digest[:16]}… leads to blob {found[:16]}…"))
        self._digests.remember(digest, sha256)
        return sha256.size

    def _sha256_of(self, blake3: str) -> Sha256 | None:
        """What the server's entry for blob `blake3` says its SHA-256 is; None without one."""
        found = self._get(blob_digest(blake3), "a blob's entry")
        if found is None:
            return None
        files = list(found.output_files)
        if [f.path for f in files] != [_BLOB_FILE]:
            return None
        return Sha256(files[0].digest.hash, files[0].digest.size_bytes)

    # ---- calls ------------------------------------------------------------------------------

    def _get(self, digest: re_pb2.Digest, what: str) -> re_pb2.ActionResult | None:
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

        request = re_pb2.GetActionResultRequest(instance_name=self.endpoint.instance, action_digest=digest)
        try:
            found: re_pb2.ActionResult = self._guard(self._rpc, f"GetActionResult ({what})", self._ac.GetActionResult,
                                                     request)
            return found
        except _NotFound:
            return None

    def _put(self, digest: re_pb2.Digest, entry: re_pb2.ActionResult, what: str) -> None:
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

        request = re_pb2.UpdateActionResultRequest(instance_name=self.endpoint.instance, action_digest=digest,
                                                   action_result=entry)
        self._guard(self._rpc, f"UpdateActionResult ({what})", self._ac.UpdateActionResult, request)

    def _rpc(self, what: str, method: Callable[..., Any], request: object) -> Any:
        import grpc

        try:
            return method(request, timeout=self._timeout, metadata=self.endpoint.metadata())
        except grpc.RpcError as e:
            error = rpc_error(self.endpoint, what, e)
            if error.code == "NOT_FOUND":
                raise _NotFound from None
            raise error from None

    def _guard(self, call: Callable[..., Any], *args: Any) -> Any:
        """`call`, with the server's failures as TransportError, and nothing sent once aborted."""
        if self._aborted is not None:
            raise TransportError(self._said(self._aborted))
        try:
            return call(*args)
        except (_NotFound, MissingRemoteBlob, WrongRemoteBytes):
            raise
        except RemoteError as e:
            raise TransportError(self._said(self._aborted) if self._aborted else str(e),
                                 refuses_uploads=e.code in _REFUSALS) from None
        except ValueError as e:  # gRPC's answer to a call on a closed channel
            raise TransportError(self._said(self._aborted or str(e))) from None

    def _said(self, reason: str) -> str:
        return f"the remote cache {self.endpoint.shown()}: {reason}"

    # ---- the end ----------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._closed.wait(_WATCH_EVERY):
            if self._aborted is None and self._stop():
                self.abort("interrupted")

    def abort(self, reason: str) -> None:
        """Cut every call under way (closing the channel cancels them) and refuse new ones."""
        self._aborted = self._aborted or reason
        self._channel.close()

    def close(self) -> None:
        self._closed.set()
        self._channel.close()


class _NotFound(Exception):
    """The server has no entry under the digest asked for."""


class WrongRemoteBlob(CorruptBlobError):
    """Bytes from the server that are not those of the blob asked for: none were stored under its name."""

    def __init__(self, digest: str, why: str) -> None:
        Exception.__init__(self, why)
        self.digest = digest
