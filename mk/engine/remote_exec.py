"""Remote execution: command actions sent to a REAPI server's workers instead of run here.

For each action that may leave (a command on a locked toolchain, not marked local) the client
makes the `Command`, the input root (see `remote_action`) and the `Action`, uploads what the
server lacks (`FindMissingBlobs`, then `BatchUpdateBlobs` or ByteStream `Write`), calls `Execute`
and follows the operation to its `ActionResult`. The server's action cache answers actions run
before, on any machine. Outputs are not downloaded: an mk worker names their blake3 digests, and
the build's content store fetches a blob from the server only when something reads it (placing
it in mk-out, or a local action's input). A worker that names no blake3 has its outputs
downloaded at once, to learn them.

What the server says is checked: every blob downloaded must match its SHA-256 and then its
blake3 name, so wrong bytes are never used. A blob the server lost, or whose bytes do not match
what its result claimed, is reported; the build's retry then runs the action again remotely
without asking the server's action cache (`skip_cache_lookup`).

Results are remembered under `remote-ac/` (namespaced by server and instance), so the next build
finds them with no network at all. The remote executor is trusted as any build farm is: it runs
the commands. The HTTP cache's signatures guard results nobody here computed.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

import blake3 as blake3_module

from mk.cache.action_cache import ActionCache, ActionResult, OutputFile
from mk.cache.cas import ContentStore
from mk.cache.local import LocalCache
from mk.cache.parts import REMOTE_RESULTS
from mk.cache.reapi import capabilities
from mk.cache.reapi.capabilities import DigestChoice
from mk.cache.reapi.cas_client import (
    SMALL_BLOB,
    BlobSource,
    MissingRemoteBlob,
    RemoteCas,
    RemoteError,
    from_proto,
    in_memory,
    local_blob,
    proto_digest,
    rpc_error,
)
from mk.cache.reapi.digests import DigestIndex, Sha256, sha256_bytes, sha256_of_file
from mk.cache.reapi.merkle import DirectoryBuilder
from mk.cache.stat_cache import FileDigest
from mk.engine.actions import Action
from mk.engine.errors import MkError
from mk.engine.execute import ActionFailed
from mk.engine.remote_action import BLAKE3_PROPERTY, EXECROOT, TOOLCHAIN, command_message, toolchain_directory
from mk.engine.remote_config import ExecutorConfig

if TYPE_CHECKING:
    import grpc
    from google.protobuf.timestamp_pb2 import Timestamp

    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

T = TypeVar("T")
_STDERR_TAIL = 4000
_FAILED_PRECONDITION = 9  # google.rpc.Code
# Execute calls whose operation the server has not made yet. A server makes a job in database
# transactions (BuildGrid): 64 at once make the first jobs wait for all of them, and the first
# workers with them, while a few at a time queue the first jobs at once and the rest while they run.
_CREATING = 8
_RECONNECT_SECONDS = 30.0  # how long a lost operation stream is waited for again (a server restart)


class RemoteExecutionFailed(MkError):
    """The remote executor could not be used (unreachable, refusing): with --remote-fallback the
    action runs here instead."""


class _InputsLost(RemoteExecutionFailed):
    """FAILED_PRECONDITION: as the REAPI says, an input or the command went missing on the server."""


class RemoteExecutor:
    def __init__(self, config: ExecutorConfig, cache: LocalCache, workspace_root: str, local_jobs: int) -> None:
        self.config = config
        self.endpoint = config.endpoint
        self.cache = cache
        self.root = workspace_root
        self.index = DigestIndex(cache.root)
        namespace = blake3_module.blake3(f"{self.endpoint.url}\n{self.endpoint.instance}".encode()).hexdigest()[:16]
        self.mirror = ActionCache(cache.root / REMOTE_RESULTS.name, f"exec-{namespace}")
        self.cas = ContentStore(cache.root)  # filled by `fetch` and by what the build stores
        self._lock = threading.Lock()
        self._connecting = threading.Lock()  # held while the channel is opened and the server asked
        self._channel: grpc.Channel | None = None
        self._remote: RemoteCas | None = None
        self._toolchains: dict[str, Sha256] = {}  # blake3 of the tree -> its Directory, uploaded this build
        self._toolchain_locks: dict[str, threading.Lock] = {}
        self._calls: dict[grpc.RpcContext, str] = {}  # streams under way and their operations, for Ctrl-C
        self._cancelled = threading.Event()
        self.distrust = False  # a result proved wrong: no remembered results, no server cache lookups
        self.unusable: str | None = None  # why remote execution stopped (with --remote-fallback)
        # Actions of the remote lane that fall back run here no more than -j at a time.
        self.fallback_slots = threading.BoundedSemaphore(max(1, local_jobs))
        self.executed = self.cached = 0
        self.timings = RemoteTimings()
        self.digests: DigestChoice | None = None  # known once the server has been asked
        self._creating = threading.BoundedSemaphore(_CREATING)

    # ---- what runs where ----------------------------------------------------------------------

    def accepts(self, action: Action) -> bool:
        """A command on a locked toolchain, not marked local, while the executor can be used."""
        return action.command is not None and action.toolchain is not None and not action.local \
            and self.unusable is None

    def remembered(self, key: str, action: Action) -> ActionResult | None:
        if self.distrust or not self.accepts(action):
            return None
        result = self.mirror.get(key)
        if result is not None:
            self.mirror.touch(key)
        return result

    # ---- connection ---------------------------------------------------------------------------

    def connect_soon(self) -> None:
        """Open the channel and read the server's capabilities on a thread of its own, while the
        build loads its graph, so that the first action does not wait for them. A failure is the
        first action's to meet: it asks again, and says what went wrong."""

        def connect() -> None:
            with contextlib.suppress(Exception):
                self._client()

        threading.Thread(target=connect, name="mk-remote-connect", daemon=True).start()

    def _client(self) -> RemoteCas:
        with self._connecting:
            if self._remote is None:
                channel = self.endpoint.channel()
                self.digests = self._check_capabilities(channel)
                self._channel = channel
                self._remote = RemoteCas(self.endpoint, channel, self.config.timeout,
                                         digest_function=self.digests.function)
            return self._remote

    def _check_capabilities(self, channel: grpc.Channel) -> DigestChoice:
        """The server executes, and takes a digest function mk sends (see `capabilities`)."""
        import grpc

        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

        request = re_pb2.GetCapabilitiesRequest(instance_name=self.endpoint.instance)
        try:
            answer = re_grpc.CapabilitiesStub(channel).GetCapabilities(
                request, timeout=self.config.timeout, metadata=self.endpoint.metadata())
        except grpc.RpcError as e:
            channel.close()
            raise RemoteExecutionFailed(str(rpc_error(self.endpoint, "GetCapabilities", e))) from None
        if not answer.execution_capabilities.exec_enabled:
            channel.close()
            raise RemoteExecutionFailed(f"the remote executor {self.endpoint.shown()} does not execute actions")
        try:
            return capabilities.choose(answer)
        except capabilities.NoCommonDigest as e:
            channel.close()
            raise RemoteExecutionFailed(f"the remote executor {self.endpoint.shown()} cannot be used: {e}") from None

    def close(self) -> None:
        self.cancel_all()
        with self._connecting:  # (a connection under way is closed once made)
            if self._channel is not None:
                self._channel.close()

    def cancel_all(self) -> None:
        """Ctrl-C: every operation under way is cancelled on the server (whose workers then stop
        them), and every Execute stream here."""
        self._cancelled.set()
        with self._lock:
            calls = list(self._calls.items())
        if calls and self._channel is not None:
            self._cancel_operations([name for _, name in calls if name])
        for call, _ in calls:
            call.cancel()  # type: ignore[no-untyped-call]  # (grpc-stubs leaves it untyped)

    def _cancel_operations(self, names: list[str]) -> None:
        import grpc
        from google.longrunning import operations_proto_pb2 as operations
        from google.protobuf import empty_pb2

        assert self._channel is not None
        cancel = self._channel.unary_unary(
            "/google.longrunning.Operations/CancelOperation",
            request_serializer=operations.CancelOperationRequest.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString)
        futures = [cancel.future(operations.CancelOperationRequest(name=name), timeout=2,
                                 metadata=self.endpoint.metadata()) for name in names]
        for future in futures:  # one that fails runs out on the server: at worst, work wasted
            with contextlib.suppress(grpc.RpcError):
                future.result()

    # ---- running an action --------------------------------------------------------------------

    def run(self, action: Action, key: str, inputs: Mapping[str, FileDigest], cas: ContentStore) -> tuple[
            ActionResult, bool]:
        """Execute `action` remotely; its result and whether the server's action cache had it."""
        remote = self._client()
        assert action.command is not None and action.toolchain is not None
        blobs: dict[Sha256, BlobSource] = {}
        toolchain = self._toolchain(action, inputs[action.toolchain.path].digest, cas)
        builder = DirectoryBuilder()
        builder.add_subtree(TOOLCHAIN, toolchain)
        builder.add_folder(EXECROOT)
        for artifact in action.inputs:
            if artifact == action.toolchain:
                continue
            want = inputs[artifact.path]
            digest, source = self._input(artifact.path, artifact.is_source, want.digest, cas)
            blobs[digest] = source
            builder.add_file(f"{EXECROOT}/{artifact.path}", digest, want.executable)
        root, directories = builder.finish()
        command = command_message(action)
        command_bytes = command.SerializeToString(deterministic=True)
        command_digest = sha256_bytes(command_bytes)
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

        action_message = re_pb2.Action(command_digest=proto_digest(command_digest),
                                       input_root_digest=proto_digest(root), platform=command.platform)
        action_bytes = action_message.SerializeToString(deterministic=True)
        action_digest = sha256_bytes(action_bytes)
        blobs.update({d: in_memory(data) for d, data in directories.items()})
        blobs[command_digest] = in_memory(command_bytes)
        blobs[action_digest] = in_memory(action_bytes)
        self._guard(lambda: remote.upload_missing(blobs))
        started = time.monotonic()
        try:
            response = self._execute(action, action_digest, self.distrust)
        except _InputsLost:  # the server lost an input before a worker read it: upload again, once
            self._guard(lambda: remote.upload_missing(blobs, ask=True))
            started = time.monotonic()
            response = self._execute(action, action_digest, self.distrust)
        produced = {f.path for f in response.result.output_files}
        if response.cached_result and (response.result.exit_code != 0
                                       or any(a.path not in produced for a in action.outputs)):
            # A failure is cached by some servers (BuildGrid), as is a result some other client
            # laid out differently: the action runs again rather than fail on them, as Bazel does.
            started = time.monotonic()
            response = self._execute(action, action_digest, True)
        waited = time.monotonic() - started
        result = self._result(action, response, remote, cas)
        self.mirror.put(key, result)
        with self._lock:
            if response.cached_result:
                self.cached += 1
            else:
                self.executed += 1
                self.timings.add(waited, response.result.execution_metadata)
        return result, response.cached_result

    def _guard(self, call: Callable[[], T]) -> T:
        """Run `call`; a server that cannot be reached or refuses is a RemoteExecutionFailed."""
        try:
            return call()
        except RemoteError as e:
            raise RemoteExecutionFailed(str(e)) from None

    def _input(self, path: str, is_source: bool, blake3: str, cas: ContentStore) -> tuple[Sha256, BlobSource]:
        """An input file's SHA-256 (hashed once, then remembered) and where its bytes come from."""
        if not is_source:
            return self.index.sha256(blake3, cas), local_blob(cas, blake3)
        file = f"{self.root}/{path}"
        known = self.index.known_sha256(blake3)
        if known is None:
            known = sha256_of_file(file, blake3)
            if known is None:
                raise MkError(f"source file '{path}' changed while the build was running; run mk again")
            self.index.remember(blake3, known)

        def source() -> Iterator[bytes]:
            with open(file, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        return known, source

    def _toolchain(self, action: Action, blake3: str, cas: ContentStore) -> Sha256:
        """The toolchain's Directory, uploaded (whatever the server lacks of it) once per build."""
        from mk.cache.tree import Tree, TreeError

        with self._lock:
            lock = self._toolchain_locks.setdefault(blake3, threading.Lock())
        with lock:
            if blake3 in self._toolchains:
                return self._toolchains[blake3]
            try:
                tree = Tree.decode(cas.read_bytes(blake3))
            except TreeError as e:
                raise ActionFailed(f"{action.describe()}: its toolchain is not a tree: {e}") from None
            cas.prefetch(e.digest for e in tree.files())
            root, directories, files = toolchain_directory(tree, lambda d: self.index.sha256(d, cas))
            blobs: dict[Sha256, BlobSource] = {d: in_memory(data) for d, data in directories.items()}
            blobs.update({d: local_blob(cas, b) for d, b in files.items()})
            self._guard(lambda: self._client().upload_missing(blobs))
            self._toolchains[blake3] = root
            return root

    def _execute(self, action: Action, digest: Sha256, skip_cache: bool) -> re_pb2.ExecuteResponse:
        """Execute, following the operation; a stream cut by a server restart is picked up again."""
        import grpc

        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

        assert self._channel is not None
        stub = re_grpc.ExecutionStub(self._channel)
        metadata = self.endpoint.metadata()
        assert self.digests is not None
        request = re_pb2.ExecuteRequest(instance_name=self.endpoint.instance, action_digest=proto_digest(digest),
                                        skip_cache_lookup=skip_cache, digest_function=self.digests.function)
        # Held until the server has made the operation (its first message).
        creating: threading.BoundedSemaphore | None = self._creating
        self._creating.acquire()
        try:
            if self._cancelled.is_set():  # Ctrl-C while it waited its turn: nothing is sent
                raise ActionFailed(f"{action.describe()} was interrupted")
            stream = stub.Execute(request, metadata=metadata)
        except BaseException:
            self._creating.release()
            raise
        name, lost_since = "", None
        while True:
            with self._lock:
                self._calls[stream] = name
            try:
                for operation in stream:
                    if creating is not None:
                        creating.release()
                        creating = None
                    if operation.name and operation.name != name:
                        name = operation.name
                        with self._lock:
                            self._calls[stream] = name
                    lost_since = None
                    if operation.done:
                        return self._response(action, operation)
                raise RemoteError("the operation stream ended before the action finished", "UNAVAILABLE")
            except (grpc.RpcError, RemoteError) as e:
                if self._cancelled.is_set():
                    raise ActionFailed(f"{action.describe()} was interrupted") from None
                error = e if isinstance(e, RemoteError) else rpc_error(self.endpoint, "Execute", e)
                busy = error.code == "RESOURCE_EXHAUSTED"
                if not (busy or (error.unavailable and name)):
                    raise RemoteExecutionFailed(str(error)) from None
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > _RECONNECT_SECONDS:
                    raise RemoteExecutionFailed(f"{error} (for {_RECONNECT_SECONDS:.0f} s)") from None
                time.sleep(1)
                # A busy server is asked again; a lost stream is picked up where it was.
                stream = stub.Execute(request, metadata=metadata) if busy or not name else \
                    stub.WaitExecution(re_pb2.WaitExecutionRequest(name=name), metadata=metadata)
            finally:
                with self._lock:
                    self._calls.pop(stream, None)
                if creating is not None:  # (a retry below is not held back)
                    creating.release()
                    creating = None

    def _response(self, action: Action, operation: object) -> re_pb2.ExecuteResponse:
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

        response = re_pb2.ExecuteResponse()
        error = getattr(operation, "error", None)
        if operation.HasField("error") and error is not None:  # type: ignore[attr-defined]
            raise RemoteExecutionFailed(f"the remote executor {self.endpoint.shown()} failed "
                                        f"{action.describe()}: {error.message} (code {error.code})")
        if not operation.response.Unpack(response):  # type: ignore[attr-defined]
            raise RemoteExecutionFailed(f"the remote executor {self.endpoint.shown()} answered "
                                        f"{action.describe()} with something other than an ExecuteResponse")
        if response.status.code == _FAILED_PRECONDITION:
            raise _InputsLost(f"the remote executor {self.endpoint.shown()} could not run {action.describe()}: "
                              f"{response.status.message}")
        if response.status.code != 0:
            raise RemoteExecutionFailed(f"the remote executor {self.endpoint.shown()} could not run "
                                        f"{action.describe()}: {response.status.message} (code {response.status.code})")
        return response

    def _result(self, action: Action, response: re_pb2.ExecuteResponse, remote: RemoteCas,
                cas: ContentStore) -> ActionResult:
        """mk's result for the ExecuteResponse: output blobs named without downloading them when
        the worker gave their blake3, the log downloaded (it is small, and usually empty)."""
        result = response.result
        try:
            out = remote.read_bytes(from_proto(result.stdout_digest)) if not result.stdout_raw else result.stdout_raw
            err = remote.read_bytes(from_proto(result.stderr_digest)) if not result.stderr_raw else result.stderr_raw
        except MissingRemoteBlob:
            out, err = b"", b"(the remote executor lost the log)"
        if result.exit_code != 0:
            text = err.decode("utf-8", "replace")[-_STDERR_TAIL:]
            how = f"exit code {result.exit_code}"
            raise ActionFailed(f"{action.describe()} failed remotely ({how}, on {self.endpoint.shown()})\n"
                               f"  command: {action.command[-1] if action.command else ''}\n"
                               + "".join(f"  | {line}\n" for line in text.splitlines()))
        produced = {f.path: f for f in result.output_files}
        outputs = []
        for artifact in action.outputs:
            file = produced.get(artifact.path)
            if file is None:
                raise ActionFailed(f"{action.describe()} did not create its declared output '{artifact.path}' "
                                   f"(run remotely on {self.endpoint.shown()})")
            digest = from_proto(file.digest)
            claimed = next((p.value for p in file.node_properties.properties if p.name == BLAKE3_PROPERTY), None)
            blake3 = self.index.known_blake3(digest) or claimed
            if blake3 is None or not _is_hex(blake3):
                blake3 = self._guard(functools.partial(remote.download, digest, cas))
            self.index.remember(blake3, digest)
            remote.mark_present((digest,))
            outputs.append(OutputFile(artifact.path, blake3, file.is_executable, artifact.is_tree))
        return ActionResult(tuple(outputs), 0, cas.put_bytes(out + err))

    # ---- the build's content store reads missing blobs from here ------------------------------

    def fetch(self, digest: str) -> bool:
        sha256 = self.index.known_sha256(digest)
        if sha256 is None or self.unusable is not None:
            return False
        try:
            got = self._client().download(sha256, self.cas)
        except RemoteError as e:
            self._lose(digest, sha256, str(e))
            return False
        if got != digest:
            self._lose(digest, sha256, f"the remote executor's blob {sha256.hash[:16]}… is not the blob "
                                       f"{digest[:16]}… its result named")
            return False
        return True

    def fetch_many(self, digests: Iterable[str]) -> None:
        """Many blobs into the build's store: the small ones in BatchReadBlobs calls, the others
        (and any small one the batch did not bring) read alone, 8 at a time."""
        import concurrent.futures as cf

        wanted = [d for d in dict.fromkeys(digests) if not self.cas.has(d)]
        small = {d: sha256 for d in wanted if (sha256 := self.index.known_sha256(d)) is not None
                 and sha256.size <= SMALL_BLOB}
        if len(small) > 1 and self.unusable is None:
            with contextlib.suppress(RemoteError):  # each is read alone below, which says what failed
                got = self._client().read_batch(small.values())
                for blake3, sha256 in small.items():
                    if sha256 in got and self.cas.put_bytes(got[sha256]) == blake3:
                        wanted.remove(blake3)
        if len(wanted) <= 1:
            for d in wanted:
                self.fetch(d)
            return
        with cf.ThreadPoolExecutor(8, thread_name_prefix="mk-remote-exec-down") as pool:
            list(pool.map(self.fetch, wanted))

    def _lose(self, blake3: str, sha256: Sha256, reason: str) -> None:
        """A result named a blob the server cannot give: the build's retry runs what made it again."""
        self.index.forget(blake3, sha256)
        with self._lock:
            first, self.distrust = not self.distrust, True
        if first:
            print(f"mk: warning: {reason}; running what made it again, without the server's action cache",
                  file=sys.stderr, flush=True)

    def give_up(self, reason: str) -> None:
        """--remote-fallback: the executor cannot be used; what is left runs here, said once."""
        with self._lock:
            first = self.unusable is None
            self.unusable = self.unusable or reason
        if first:
            print(f"mk: warning: {reason}; running the remaining actions here (--remote-fallback)",
                  file=sys.stderr, flush=True)

    def report(self) -> str | None:
        if not (self.executed or self.cached or self.unusable):
            return None
        gave_up = f"; stopped using it: {self.unusable}" if self.unusable else ""
        digests = f", {self.digests.said()}" if self.digests is not None else ""
        return (f"mk: remote executor {self.endpoint.shown()}{digests}: {self.executed} actions executed, "
                f"{self.cached} from its action cache{gave_up}{self.timings.line()}")


class RemoteTimings:
    """Where the time of the actions executed remotely went, from the timestamps each worker puts
    in its ActionResult (REAPI's ExecutedActionMetadata): the worker's own work around the command
    (reading inputs, storing and uploading outputs) and the rest of the round trip (the server's
    queueing and assignment, the network, the client's stream). Each is a median over the build.

    The worker's part runs from its input fetch's start to its output upload's end: BuildGrid
    replaces `worker_start` and `worker_completed` with its own clock (the lease assigned, the
    lease reported done), which would count the Bots API's round trips as the worker's."""

    def __init__(self) -> None:
        self.worker: list[float] = []  # seconds a worker spent on an action beyond its command
        self.beyond_worker: list[float] = []  # seconds of Execute beyond the worker's whole part

    def add(self, waited: float, metadata: re_pb2.ExecutedActionMetadata) -> None:
        """`waited`: the seconds the Execute call took, as the client saw them."""
        if not (metadata.HasField("input_fetch_start_timestamp")
                and metadata.HasField("output_upload_completed_timestamp")):
            return  # a worker that does not say: nothing to tell
        on_worker = _seconds(metadata.output_upload_completed_timestamp) - _seconds(
            metadata.input_fetch_start_timestamp)
        command = _seconds(metadata.execution_completed_timestamp) - _seconds(metadata.execution_start_timestamp)
        self.worker.append(max(0.0, on_worker - command))
        self.beyond_worker.append(max(0.0, waited - on_worker))

    def line(self) -> str:
        if not self.worker:
            return ""
        return (f"; per action beyond its command (median ms): {_ms(self.worker)} on the worker, "
                f"{_ms(self.beyond_worker)} in the server and the network")


def _seconds(timestamp: Timestamp) -> float:
    return timestamp.ToNanoseconds() / 1e9


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}"


def _is_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
