"""`mk worker`: a bot of BuildGrid's Bots API (google.devtools.remoteworkers.v1test2).

It opens a bot session (`CreateBotSession`, offering this machine's OS and architecture and
`capacity` leases at once), then keeps calling `UpdateBotSession`: a long poll that hands it
new leases and, the next time, carries back the finished ones with their ActionResult. A lease
finishing cuts the poll short, so a result is reported at once rather than at the poll's end.
Each lease runs on a thread of its own (see `lease`).

- A lease the server no longer lists (cancelled, or given to another bot) is stopped: its
  sandbox is killed and nothing of it is reported.
- A server that goes away is called again, every second, until it is back (a restart keeps its
  database, so the session and its leases carry on); one that has forgotten the session gets a
  new one.
- Ctrl-C (or SIGTERM) kills the running commands and hands their leases back as UNAVAILABLE, which
  the server queues again for another bot: a result is reported only whole.

A worker that cannot start mk's sandbox (no bubblewrap, no user namespaces) refuses to start at
all, rather than failing every action it leases.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from mk.cache.local import LocalCache
from mk.cache.reapi.cas_client import MissingRemoteBlob, RemoteCas, RemoteError, from_proto, rpc_error
from mk.cache.reapi.digests import DigestIndex
from mk.cache.reapi.endpoint import Endpoint
from mk.cache.toolchains import Toolchains
from mk.engine import lease as leases
from mk.engine import sandbox
from mk.engine.execute import RunningProcesses
from mk.engine.remote_action import platform_properties

if TYPE_CHECKING:
    import grpc

    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from mk.cache.reapi.protos.google.devtools.remoteworkers.v1test2 import bots_pb2

_POLL_SECONDS = 30.0  # the longest one UpdateBotSession waits for work
_RETRY_SECONDS = 1.0
_HEARTBEAT_SECONDS = 2.0  # how often a worker with no free slot calls back (well within the keepalive)
# Answers after which the same session is called again (a restarting or busy server).
_TRANSIENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED", "INTERNAL", "UNKNOWN"})


@dataclass
class _Running:
    lease: bots_pb2.Lease
    processes: RunningProcesses = field(default_factory=RunningProcesses)
    thread: threading.Thread | None = None
    result: re_pb2.ActionResult | None = None
    error: tuple[int, str] | None = None  # a gRPC status code and message, when it could not run


class Worker:
    def __init__(self, endpoint: Endpoint, cache: LocalCache, capacity: int, stream: TextIO = sys.stderr,
                 timeout: float = 60.0, prefetch: int = 0) -> None:
        """`capacity` leases run at once; `prefetch` more are taken and wait for a free slot, so
        that one starts as soon as another ends, not a round trip to the server later."""
        self.endpoint = endpoint
        self.cache = cache
        self.capacity = capacity
        self.prefetch = prefetch
        self._slots = threading.BoundedSemaphore(capacity)
        self.stream = stream
        self.timeout = timeout
        self.bot_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set when a lease finishes: the current UpdateBotSession is cut short
        self._running: dict[str, _Running] = {}
        self._finished: dict[str, _Running] = {}
        self.leases_done = 0

    def say(self, text: str) -> None:
        self.stream.write(f"mk worker: {text}\n")
        self.stream.flush()

    def serve(self, stop: threading.Event | None = None) -> None:
        """Run until Ctrl-C (or `stop` is set); SandboxUnavailable if this machine cannot sandbox."""
        sandbox.bubblewrap()  # refuse before taking any lease
        self.cache.sweep_stale_scratch()  # what a killed worker left
        from mk.cache.reapi.protos.google.devtools.remoteworkers.v1test2 import bots_pb2_grpc

        channel = self.endpoint.channel()
        self._bots = bots_pb2_grpc.BotsStub(channel)
        remote = RemoteCas(self.endpoint, channel, self.timeout, remember=False)
        self._context = leases.LeaseContext(remote, self.cache, DigestIndex(self.cache.root),
                                            Toolchains(self.cache, self.cache.cas), self.bot_id)
        stop = stop or threading.Event()
        session = self._create(stop)
        held = f", {self.prefetch} more held ready" if self.prefetch else ""
        self.say(f"bot {self.bot_id} serving {self.endpoint.shown()} with {self.capacity} "
                 f"lease{'s' if self.capacity > 1 else ''} at a time{held}")
        try:
            while not stop.is_set() and session is not None:
                session = self._update(session, stop)
        except KeyboardInterrupt:
            pass
        finally:
            self._hand_back(session)
            channel.close()

    # ---- the session ----------------------------------------------------------------------------

    def _session(self) -> bots_pb2.BotSession:
        from mk.cache.reapi.protos.google.devtools.remoteworkers.v1test2 import bots_pb2, worker_pb2

        device = worker_pb2.Device(handle=self.bot_id, properties=[
            worker_pb2.Device.Property(key=k, value=v) for k, v in platform_properties()])
        worker = worker_pb2.Worker(devices=[device], configs=[
            worker_pb2.Worker.Config(key="capacity", value=str(self.capacity + self.prefetch))])
        return bots_pb2.BotSession(bot_id=self.bot_id, status=bots_pb2.OK, worker=worker)

    def _create(self, stop: threading.Event) -> bots_pb2.BotSession | None:
        from mk.cache.reapi.protos.google.devtools.remoteworkers.v1test2 import bots_pb2

        request = bots_pb2.CreateBotSessionRequest(parent=self.endpoint.instance, bot_session=self._session())
        while not stop.is_set():
            try:
                session: bots_pb2.BotSession = self._bots.CreateBotSession(
                    request, timeout=_POLL_SECONDS, metadata=self.endpoint.metadata())
                self._take(session)
                return session
            except _rpc_errors() as e:
                error = rpc_error(self.endpoint, "a bot session", e)
                if error.code not in _TRANSIENT:
                    raise WorkerError(str(error)) from None
                self.say(f"{error}; trying again")
                stop.wait(_RETRY_SECONDS)
        return None

    def _update(self, session: bots_pb2.BotSession, stop: threading.Event) -> bots_pb2.BotSession | None:
        """One UpdateBotSession: report, wait for work (cut short when a lease finishes), take it."""
        import grpc

        from mk.cache.reapi.protos.google.devtools.remoteworkers.v1test2 import bots_pb2

        self._wait_while_full(stop)
        reported = self._report(session)
        request = bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session)
        wake = threading.Event()  # this call's own: a finished lease, or the answer, sets it
        with self._lock:
            self._wake = wake
            if len(self._finished) > len(reported):
                wake.set()  # one finished since the report was made: a short call
        call = self._bots.UpdateBotSession.future(request, timeout=_POLL_SECONDS, metadata=self.endpoint.metadata())
        call.add_done_callback(lambda _: wake.set())
        while not wake.wait(0.5):
            if stop.is_set():
                break
        if not call.done() and (self._finished_since(reported) or stop.is_set()):
            call.cancel()  # type: ignore[no-untyped-call]  # a lease finished (or we stop): report it next
        try:
            answer: bots_pb2.BotSession = call.result()
        except grpc.FutureCancelledError:
            return session
        except grpc.RpcError as e:
            error = rpc_error(self.endpoint, "the bot session", e)
            if error.code in _TRANSIENT:
                if error.code != "CANCELLED":
                    self.say(f"{error}; trying again")
                    stop.wait(_RETRY_SECONDS)
                return session
            # The server forgot the session (its database was reset, or it expired it): a new one.
            self.say(f"{error}; opening a new bot session")
            self._abandon_all()
            return self._create(stop)
        with self._lock:
            for lease_id in reported:
                self._finished.pop(lease_id, None)
                self.leases_done += 1
        self._take(answer)
        return answer

    def _wait_while_full(self, stop: threading.Event) -> None:
        """With every lease slot busy the server answers at once, having no work to give: rather
        than ask again and again, wait for a lease to finish, calling back only every
        _HEARTBEAT_SECONDS (so the session stays alive and a cancelled lease is seen)."""
        wake = threading.Event()
        with self._lock:
            self._wake = wake
            if len(self._running) < self.capacity + self.prefetch or self._finished:
                return
        wake.wait(_HEARTBEAT_SECONDS)

    def _finished_since(self, reported: list[str]) -> bool:
        with self._lock:
            return any(lease_id not in reported for lease_id in self._finished)

    def _report(self, session: bots_pb2.BotSession) -> list[str]:
        """Set the session's leases to what runs here and what finished; the finished ones' ids."""
        from google.rpc import status_pb2

        from mk.cache.reapi.protos.google.devtools.remoteworkers.v1test2 import bots_pb2

        del session.leases[:]
        with self._lock:
            running = list(self._running.values())
            finished = list(self._finished.items())
        for run in running:
            session.leases.add().CopyFrom(run.lease)
            session.leases[-1].state = bots_pb2.LeaseState.ACTIVE
        for _, run in finished:
            lease = session.leases.add()
            lease.CopyFrom(run.lease)
            lease.state = bots_pb2.LeaseState.COMPLETED
            if run.result is not None:
                lease.result.Pack(run.result)
                lease.status.CopyFrom(status_pb2.Status(code=0))
            else:
                assert run.error is not None
                lease.status.CopyFrom(status_pb2.Status(code=run.error[0], message=run.error[1]))
        return [lease_id for lease_id, _ in finished]

    def _take(self, session: bots_pb2.BotSession) -> None:
        """Start the leases that are new; stop those the server no longer lists (cancelled)."""
        from mk.cache.reapi.protos.google.devtools.remoteworkers.v1test2 import bots_pb2

        listed = {lease.id for lease in session.leases if lease.state != bots_pb2.LeaseState.CANCELLED}
        with self._lock:
            gone = [run for lease_id, run in self._running.items() if lease_id not in listed]
            for run in gone:
                del self._running[run.lease.id]
        for run in gone:
            self.say(f"lease {run.lease.id} was cancelled; stopping it")
            run.processes.kill_all()
        for lease in session.leases:
            if lease.state not in (bots_pb2.LeaseState.PENDING, bots_pb2.LeaseState.ACTIVE):
                continue
            with self._lock:
                if lease.id in self._running or lease.id in self._finished:
                    continue
                run = _Running(bots_pb2.Lease())
                run.lease.CopyFrom(lease)
                self._running[lease.id] = run
            run.thread = threading.Thread(target=self._run, args=(run,), name=f"mk-lease-{lease.id[-8:]}",
                                          daemon=True)
            run.thread.start()

    # ---- one lease ------------------------------------------------------------------------------

    def _run(self, run: _Running) -> None:
        from google.rpc import code_pb2

        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

        try:
            self._take_slot(run)
        except InterruptedError:
            return  # cancelled, or handed back, while it waited: nothing ran
        held = [True]

        def free_slot() -> None:
            """Once the command has ended: a held lease's command starts while this one's outputs
            are stored and sent."""
            if held[0]:
                held[0] = False
                self._slots.release()

        try:
            action = re_pb2.Action()
            if run.lease.payload.Is(re_pb2.Action.DESCRIPTOR):
                run.lease.payload.Unpack(action)
            else:
                digest = re_pb2.Digest()
                run.lease.payload.Unpack(digest)
                action = self._context.remote.read_message(from_proto(digest), re_pb2.Action())
            run.result = leases.run(self._context, action, run.processes, free_slot)
        except leases.LeaseRefused as e:
            run.error = (code_pb2.FAILED_PRECONDITION, str(e))
        except InterruptedError:
            return  # stopped: the lease was cancelled, or is handed back
        except MissingRemoteBlob as e:  # the client uploads it again and retries (REAPI's convention)
            run.error = (code_pb2.FAILED_PRECONDITION, f"mk worker {self.bot_id}: {e}")
        except RemoteError as e:
            run.error = (code_pb2.UNAVAILABLE if e.unavailable else code_pb2.INTERNAL, str(e))
        except Exception as e:  # reported to the client, which says what failed where
            run.error = (code_pb2.INTERNAL, f"mk worker {self.bot_id}: {type(e).__name__}: {e}")
        finally:
            free_slot()
        with self._lock:
            if self._running.pop(run.lease.id, None) is None:
                return  # cancelled meanwhile: nothing to report
            self._finished[run.lease.id] = run
            wake = self._wake
        wake.set()

    def _take_slot(self, run: _Running) -> None:
        """Wait until fewer than `capacity` leases run (a held lease waits here); InterruptedError
        if the lease is stopped meanwhile."""
        while not self._slots.acquire(timeout=0.05):
            if run.processes.cancelled.is_set():
                raise InterruptedError("the lease was stopped before it ran")

    def _abandon_all(self) -> None:
        with self._lock:
            runs = list(self._running.values())
            self._running.clear()
            self._finished.clear()
        for run in runs:
            run.processes.kill_all()

    def _hand_back(self, session: bots_pb2.BotSession | None) -> None:
        """On the way out: kill what runs, and tell the server to give its leases to another bot."""
        from google.rpc import code_pb2

        with self._lock:
            runs = list(self._running.values())
        for run in runs:
            run.processes.kill_all()
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout=10)
        if session is None:
            return
        from mk.cache.reapi.protos.google.devtools.remoteworkers.v1test2 import bots_pb2

        with self._lock:
            for run in runs:
                self._running.pop(run.lease.id, None)
                run.result, run.error = None, (code_pb2.UNAVAILABLE, f"mk worker {self.bot_id} stopped")
                self._finished[run.lease.id] = run
        self._report(session)
        session.status = bots_pb2.BotStatus.BOT_TERMINATING
        request = bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session)
        try:
            self._bots.UpdateBotSession(request, timeout=5, metadata=self.endpoint.metadata())
        except _rpc_errors():
            pass  # the server queues them again when the session expires
        self.say(f"stopped; {len(runs)} running lease{'s' if len(runs) != 1 else ''} handed back")


class WorkerError(Exception):
    pass


def _rpc_errors() -> type[grpc.RpcError]:
    import grpc

    return grpc.RpcError
