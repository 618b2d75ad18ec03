"""Blobs to and from a REAPI server's content store, every one checked against its digest.

Uploads ask `FindMissingBlobs` first, then send small blobs in `BatchUpdateBlobs` messages and large
ones with ByteStream `Write`. Downloads go through ByteStream `Read` and are verified against the
SHA-256 they were asked by (and, once in mk's store, against their blake3 name), so a server that
sends other bytes, or fewer, never gets them used. Errors are `RemoteError`, saying which server
and what it answered.
"""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from mk.cache.cas import BlobReader, ContentStore
from mk.cache.reapi.capabilities import SHA256, Function
from mk.cache.reapi.digests import Sha256, sha256_bytes
from mk.cache.reapi.endpoint import Endpoint

if TYPE_CHECKING:
    import grpc

    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

_CHUNK = 1 << 20
_BATCH_BYTES = 2 << 20  # below every server's limit (BuildGrid: 4 MiB), headers included
_FIND_BATCH = 5000
_DIRECT_BLOBS, _DIRECT_BYTES = 16, 256 << 10  # at most this many small blobs are sent without asking
SMALL_BLOB = 64 << 10  # read with others in one BatchReadBlobs rather than a ByteStream Read of its own


class RemoteError(Exception):
    """A REAPI server did not do what was asked; `code` is the gRPC status name, when there is one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def unavailable(self) -> bool:
        """The server could not be reached or did not answer in time: worth retrying, or falling back."""
        return self.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def rpc_error(endpoint: Endpoint, what: str, error: grpc.RpcError) -> RemoteError:
    """A RemoteError for a failed call, in words."""
    code = error.code() if hasattr(error, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    if name == "UNAVAILABLE":
        said = f"cannot reach the {endpoint.role} {endpoint.shown()} ({details})"
    elif name == "DEADLINE_EXCEEDED":
        said = f"the {endpoint.role} {endpoint.shown()} did not answer {what} in time"
    else:
        said = f"the {endpoint.role} {endpoint.shown()} refused {what}: {name}: {details}"
    return RemoteError(said, name)


BlobSource = Callable[[], Iterator[bytes]]  # the bytes of one blob, in chunks


def local_blob(cas: ContentStore, blake3: str) -> BlobSource:
    """An upload's source: a blob of the local store, verified as it is read."""
    return lambda: cas.stream(blake3)


def in_memory(data: bytes) -> BlobSource:
    return lambda: iter((data,))


class RemoteCas:
    def __init__(self, endpoint: Endpoint, channel: grpc.Channel, timeout: float, remember: bool = True,
                 digest_function: Function = SHA256) -> None:
        """`remember`: blobs uploaded, or known to be there, are not sent again by this object. A
        build's client remembers; a long-lived worker does not, since the server may lose a blob
        between two leases that make it. `digest_function`: what requests say their digests are
        (the client's choice from the server's capabilities; a worker's leases are SHA-256)."""
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
        from mk.cache.reapi.protos.google.bytestream import bytestream_pb2_grpc as bs_grpc

        self.endpoint = endpoint
        self.timeout = timeout
        self._cas = re_grpc.ContentAddressableStorageStub(channel)
        self._bytestream = bs_grpc.ByteStreamStub(channel)
        self._lock = threading.Lock()
        self._present: set[Sha256] = set()
        self._remember = remember
        self.digest_function = digest_function
        self._together = _Together(lambda blobs: self._batch_updates({d: in_memory(b) for d, b in blobs.items()}))

    def _call(self, what: str, method: Callable[..., Any], request: object, timeout: float | None = None) -> Any:
        import grpc

        try:
            return method(request, timeout=timeout or self.timeout, metadata=self.endpoint.metadata())
        except grpc.RpcError as e:
            raise rpc_error(self.endpoint, what, e) from None

    def find_missing(self, digests: Iterable[Sha256]) -> set[Sha256]:
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

        wanted = sorted(set(digests))
        missing: set[Sha256] = set()
        for start in range(0, len(wanted), _FIND_BATCH):
            request = re_pb2.FindMissingBlobsRequest(
                instance_name=self.endpoint.instance, digest_function=self.digest_function,
                blob_digests=[proto_digest(d) for d in wanted[start:start + _FIND_BATCH]])
            answer = self._call("FindMissingBlobs", self._cas.FindMissingBlobs, request)
            missing.update(Sha256(d.hash, d.size_bytes) for d in answer.missing_blob_digests)
        return missing

    def upload_missing(self, blobs: Mapping[Sha256, BlobSource], ask: bool = False) -> int:
        """Upload those of `blobs` the server lacks; returns how many were sent.

        A few small blobs not known to be there (an action's Command, Action and Directories,
        a worker's outputs) are sent at once, which costs less than asking first; anything else is
        asked about with FindMissingBlobs. Blobs this process uploaded, or was told the server has,
        are not sent again, unless `ask`: then the server is asked about every one (it lost some)."""
        with self._lock:
            unknown = [d for d in blobs if ask or d not in self._present]
        small = sum(d.size for d in unknown) <= _DIRECT_BYTES and len(unknown) <= _DIRECT_BLOBS and not ask
        if small:
            self._together.send({d: b"".join(blobs[d]()) for d in unknown})
            self.mark_present(unknown)
            return len(unknown)
        missing = self.find_missing(unknown)
        for digest in sorted(d for d in missing if d.size > _BATCH_BYTES // 2):
            self._write(digest, blobs[digest])
        self._batch_updates({d: blobs[d] for d in missing if d.size <= _BATCH_BYTES // 2})
        self.mark_present(unknown)
        return len(missing)

    def mark_present(self, digests: Iterable[Sha256]) -> None:
        """Blobs the server has (it said so, or made them): never uploaded again by this process."""
        if self._remember:
            with self._lock:
                self._present.update(digests)

    def _batch_updates(self, blobs: Mapping[Sha256, BlobSource]) -> None:
        """Small blobs in as few BatchUpdateBlobs calls as fit, each read when its call is made."""
        batch: list[tuple[Sha256, bytes]] = []
        for digest in sorted(blobs):
            if batch and sum(d.size for d, _ in batch) + digest.size > _BATCH_BYTES:
                self._batch_update(batch)
                batch = []
            batch.append((digest, b"".join(blobs[digest]())))
        if batch:
            self._batch_update(batch)

    def _batch_update(self, batch: list[tuple[Sha256, bytes]]) -> None:
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

        request = re_pb2.BatchUpdateBlobsRequest(instance_name=self.endpoint.instance,
                                                 digest_function=self.digest_function, requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(digest=proto_digest(d), data=data) for d, data in batch])
        answer = self._call("BatchUpdateBlobs", self._cas.BatchUpdateBlobs, request)
        for response in answer.responses:
            if response.status.code != 0:
                raise RemoteError(f"the {self.endpoint.role} {self.endpoint.shown()} refused blob "
                                  f"{response.digest.hash[:16]}…: {response.status.message}")

    def _write(self, digest: Sha256, source: BlobSource) -> None:
        from mk.cache.reapi.protos.google.bytestream import bytestream_pb2 as bs_pb2

        name = self._prefix() + f"uploads/{uuid.uuid4()}/{digest.resource()}"

        def requests() -> Iterator[bs_pb2.WriteRequest]:
            offset = 0
            for chunk in _rechunk(source()):
                yield bs_pb2.WriteRequest(resource_name=name if offset == 0 else "", write_offset=offset, data=chunk)
                offset += len(chunk)
            yield bs_pb2.WriteRequest(resource_name=name if offset == 0 else "", write_offset=offset,
                                      finish_write=True)

        timeout = self.timeout + digest.size / (1 << 20)  # a second per MiB beyond the usual deadline
        answer = self._call("a ByteStream Write", self._bytestream.Write, requests(), timeout)
        if answer.committed_size not in (digest.size, -1):
            raise RemoteError(f"the {self.endpoint.role} {self.endpoint.shown()} kept {answer.committed_size} of the "
                              f"{digest.size} bytes of blob {digest.hash[:16]}…")

    def read_bytes(self, digest: Sha256) -> bytes:
        """A small blob (a Directory, a log), verified."""
        return b"".join(self._read(digest))

    def read_batch(self, digests: Iterable[Sha256]) -> dict[Sha256, bytes]:
        """Small blobs in as few BatchReadBlobs calls as fit: those the server sent whole and
        right. A blob it lacks, or sent wrong, is left out, for the caller to read alone (where
        what went wrong is said)."""
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

        found: dict[Sha256, bytes] = {}
        batches: list[list[Sha256]] = [[]]
        for digest in sorted(set(digests)):
            if batches[-1] and sum(d.size for d in batches[-1]) + digest.size > _BATCH_BYTES:
                batches.append([])
            batches[-1].append(digest)
        for batch in batches:
            request = re_pb2.BatchReadBlobsRequest(instance_name=self.endpoint.instance,
                                                   digest_function=self.digest_function,
                                                   digests=[proto_digest(d) for d in batch])
            answer = self._call("BatchReadBlobs", self._cas.BatchReadBlobs, request)
            for response in answer.responses:
                digest = from_proto(response.digest)
                if response.status.code == 0 and digest in batch and sha256_bytes(response.data) == digest:
                    found[digest] = response.data
        return found

    def read_tree(self, root: Sha256) -> dict[Sha256, re_pb2.Directory]:
        """The Directories under `root` (itself included) in one GetTree stream, each filed under
        the digest of its own bytes: one the server sent otherwise than it was stored is filed
        under no digest anyone asks for, so the caller reads it alone. A server that does not
        answer GetTree gives an empty map."""
        import grpc

        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

        request = re_pb2.GetTreeRequest(instance_name=self.endpoint.instance, root_digest=proto_digest(root),
                                        digest_function=self.digest_function)
        found: dict[Sha256, re_pb2.Directory] = {}
        try:
            for page in self._cas.GetTree(request, timeout=self.timeout, metadata=self.endpoint.metadata()):
                for directory in page.directories:
                    found[sha256_bytes(directory.SerializeToString(deterministic=True))] = directory
        except grpc.RpcError:
            return {}  # (each is read alone, which says what went wrong)
        return found

    def read_message(self, digest: Sha256, message: Any) -> Any:
        """Parse the blob `digest` into `message` (a fresh protobuf message), which is returned."""
        return self._parse(digest, self.read_bytes(digest), message)

    def read_messages(self, wanted: Mapping[Sha256, Any]) -> None:
        """Parse each small blob into its message, all read in one call (any the call did not
        bring is read alone, which says what went wrong)."""
        got = self.read_batch(wanted)
        for digest, message in wanted.items():
            self._parse(digest, got[digest] if digest in got else self.read_bytes(digest), message)

    def _parse(self, digest: Sha256, data: bytes, message: Any) -> Any:
        from google.protobuf.message import DecodeError

        try:
            message.ParseFromString(data)
        except DecodeError:
            raise RemoteError(f"blob {digest.hash[:16]}… from {self.endpoint.shown()} is not a "
                              f"{type(message).__name__}") from None
        return message

    def download(self, digest: Sha256, cas: ContentStore) -> str:
        """Stream the blob into the local store, verified on the way; returns its blake3 digest."""
        blake3, size = cas.put_stream(io.BufferedReader(BlobReader(self._read(digest)), _CHUNK))
        assert size == digest.size  # (checked in _read, before the store named the blob)
        return blake3

    def _read(self, digest: Sha256) -> Iterator[bytes]:
        """The blob's bytes; the last chunk is held back until the whole blob checks."""
        import grpc

        from mk.cache.reapi.protos.google.bytestream import bytestream_pb2 as bs_pb2

        if digest.size == 0:
            return
        request = bs_pb2.ReadRequest(resource_name=self._prefix() + digest.resource())
        hasher, size, ahead = hashlib.sha256(), 0, b""
        timeout = self.timeout + digest.size / (1 << 20)
        try:
            for response in self._bytestream.Read(request, timeout=timeout, metadata=self.endpoint.metadata()):
                if ahead:
                    yield ahead
                ahead = response.data
                hasher.update(ahead)
                size += len(ahead)
                if size > digest.size:
                    break
        except grpc.RpcError as e:
            error = rpc_error(self.endpoint, f"blob {digest.hash[:16]}…", e)
            if error.code == "NOT_FOUND":
                raise MissingRemoteBlob(self.endpoint, digest) from None
            raise error from None
        if size != digest.size or hasher.hexdigest() != digest.hash:
            raise WrongRemoteBytes(f"the {self.endpoint.role} {self.endpoint.shown()} sent wrong bytes for blob "
                              f"{digest.hash[:16]}… ({size} bytes, SHA-256 {hasher.hexdigest()[:16]}…); "
                              "they were not used")
        if ahead:
            yield ahead

    def _prefix(self) -> str:
        return f"{self.endpoint.instance}/" if self.endpoint.instance else ""


class WrongRemoteBytes(RemoteError):
    """The server sent other bytes than those of the digest asked for (none were used)."""


class _Together:
    """Small uploads of threads running side by side, sent in one call: while one call is under
    way, what other threads bring waits and goes in the next. A build sends the first wave of its
    actions' Commands, Actions and Directories in a few calls instead of one per action, which a
    server handling each call in turn (BuildGrid) answers sooner. Each thread returns once its
    own blobs are sent, and sees the error of the call that carried them."""

    def __init__(self, send: Callable[[Mapping[Sha256, bytes]], None]) -> None:
        self._send = send
        self._changed = threading.Condition()
        self._open = _Batch()
        self._sending = False

    def send(self, blobs: Mapping[Sha256, bytes]) -> None:
        with self._changed:
            batch = self._open
            batch.blobs.update(blobs)
            while self._sending and not batch.done:
                self._changed.wait()
            lead = not batch.done  # nothing under way: this thread sends the open batch, its own among them
            if lead:
                self._sending = True
                self._open = _Batch()
        if lead:
            try:
                self._send(batch.blobs)
            except BaseException as e:
                batch.error = e
                raise
            finally:
                with self._changed:
                    batch.done, self._sending = True, False
                    self._changed.notify_all()
        elif isinstance(batch.error, RemoteError):
            raise RemoteError(str(batch.error), batch.error.code)
        elif batch.error is not None:
            raise RemoteError(f"the upload of blobs sent together failed: {batch.error!r}")


class _Batch:
    def __init__(self) -> None:
        self.blobs: dict[Sha256, bytes] = {}
        self.done = False
        self.error: BaseException | None = None


class MissingRemoteBlob(RemoteError):
    def __init__(self, endpoint: Endpoint, digest: Sha256) -> None:
        super().__init__(f"the {endpoint.role} {endpoint.shown()} does not have blob {digest.hash[:16]}… "
                         f"({digest.size} bytes)", "NOT_FOUND")
        self.digest = digest


def proto_digest(digest: Sha256) -> re_pb2.Digest:
    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

    return re_pb2.Digest(hash=digest.hash, size_bytes=digest.size)


def from_proto(digest: re_pb2.Digest) -> Sha256:
    return Sha256(digest.hash, digest.size_bytes)


def _rechunk(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The same bytes in pieces of at most _CHUNK (a gRPC message each)."""
    for chunk in chunks:
        for start in range(0, len(chunk), _CHUNK):
            yield chunk[start:start + _CHUNK]
