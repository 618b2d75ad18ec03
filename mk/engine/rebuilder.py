"""The rebuilder decides *whether* an action runs: it runs only when no valid result is cached.

(The scheduler, separately, decides in what order; see "Build Systems à la Carte".)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mk.cache.action_cache import ActionResult, RecentResults
from mk.cache.local import LocalCache
from mk.cache.stat_cache import FileDigest
from mk.engine.actions import Action
from mk.engine.execute import Executor
from mk.engine.keys import KeyMaterial

if TYPE_CHECKING:
    from mk.cache.remote import RemoteCache
    from mk.engine.remote_exec import RemoteExecutor

# How the key, and `mk explain`, name the host's tools (the digest of its package database).
HOST_TOOLS = "the host's tools (toolchain = \"host\")"


@dataclass(frozen=True)
class Outcome:
    action: Action
    material: KeyMaterial
    result: ActionResult
    status: Literal["executed", "cached"]
    origin: Literal["local", "remote"]
    seconds: float

    @property
    def key(self) -> str:
        return self.material.key


class Rebuilder:
    def __init__(
        self,
        cache: LocalCache,
        executor: Executor,
        host_identity: str | None,
        recent: RecentResults | None = None,
        force: bool = False,
        remote: RemoteCache | None = None,
        upload_host_results: bool = False,
        remote_executor: RemoteExecutor | None = None,
    ) -> None:
        self.cache = cache
        self.executor = executor
        self.host_identity = host_identity  # the host toolchain's, if any action runs on it
        self.recent = recent
        self.force = force  # --check: run everything, whatever is cached
        self.remote = None if force else remote
        # Results of commands run on the host's tools hold whatever those tools made on this
        # machine: shared only when the workspace asks for it.
        self.upload_host_results = upload_host_results
        self.remote_executor = None if force else remote_executor

    def runs_remotely(self, action: Action) -> bool:
        """Whether `action` goes to the remote executor (the scheduler keeps more of those in flight)."""
        return self.remote_executor is not None and self.remote_executor.accepts(action)

    def stop(self) -> None:
        """Ctrl-C: stop every command running here, and every action under way remotely."""
        self.executor.processes.kill_all()
        if self.remote_executor is not None:
            self.remote_executor.cancel_all()

    def material(self, action: Action, inputs: Mapping[str, FileDigest]) -> KeyMaterial:
        files = tuple((path, f"{inputs[path].digest}:{int(inputs[path].executable)}") for path in action.sorted_inputs)
        host = ((HOST_TOOLS, self.host_identity or ""),) if action.runs_on_host_tools else ()
        return KeyMaterial(action.static, files, host)

    def cached(self, action: Action, material: KeyMaterial) -> Outcome | None:
        """A result found without the network, or None.

        Either a local result whose every output blob is still present, or a result this machine
        got from the remote cache earlier (verified then), whose blobs are fetched when read.
        """
        if self.force:
            return None
        started = time.perf_counter()
        key = material.key
        verified = self.recent.verified if self.recent is not None else None
        if verified is not None and (result := verified.get(key)) is not None:
            return Outcome(action, material, result, "cached", "local", time.perf_counter() - started)
        remembered = self._remembered(key)
        result = remembered or self.cache.ac.get(key)
        if result is not None:
            # Blobs inherit recency from the results naming them (see cache.maintenance.gc).
            self.cache.ac.touch(key)
            # The last build's results were complete then; gc drops a result before any blob it
            # needs, so only the outputs are checked for them. Any other result is checked whole,
            # tree contents included.
            complete = all(self.cache.cas.has(o.digest) for o in result.outputs) if remembered \
                else result.complete(self.executor.cas)
            if complete and _names_its_outputs(result, action):
                if verified is not None:
                    verified[key] = result
                return Outcome(action, material, result, "cached", "local", time.perf_counter() - started)
        if self.remote is not None and (result := self.remote.remembered(key)) is not None \
                and _names_its_outputs(result, action):
            return Outcome(action, material, result, "cached", "remote", time.perf_counter() - started)
        if self.remote_executor is not None and (result := self.remote_executor.remembered(key, action)) \
                is not None and _names_its_outputs(result, action):
            return Outcome(action, material, result, "cached", "remote", time.perf_counter() - started)
        return None

    def _remembered(self, key: str) -> ActionResult | None:
        """The last build's result for `key`, if its action-cache entry is still there unchanged."""
        remembered = self.recent.get(key) if self.recent else None
        if remembered is None or not self.cache.ac.has(key, size=remembered[1]):
            return None
        return remembered[0]

    def execute(
        self, action: Action, material: KeyMaterial, inputs: Mapping[str, FileDigest],
        on_start: Callable[[], None] | None = None,
    ) -> Outcome:
        """Ask the remote cache (on a worker thread: it is a network round trip), else run it
        (calling `on_start` first)."""
        started = time.perf_counter()
        key = material.key
        if self.remote is not None and (result := self.remote.lookup(key)) is not None \
                and _names_its_outputs(result, action):
            return Outcome(action, material, result, "cached", "remote", time.perf_counter() - started)
        if on_start is not None:
            on_start()
        fallback: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if self.runs_remotely(action):
            assert self.remote_executor is not None
            remote = self._run_remotely(self.remote_executor, action, material, inputs, started)
            if remote is not None:
                return remote
            fallback = self.remote_executor.fallback_slots  # at most -j of them run here at once
        with fallback:
            result = self.executor.run(action, key, inputs)
        if not self.force:
            self.cache.ac.put(key, result)
            if self.recent is not None and self.recent.verified is not None:
                self.recent.verified[key] = result
        shared = self.upload_host_results or not action.runs_on_host_tools
        if self.remote is not None and self.remote.uploading and shared:
            # Blobs first (tree contents too), then the signed result.
            self.remote.upload(key, result, result.blobs(self.cache.cas))
        return Outcome(action, material, result, "executed", "local", time.perf_counter() - started)

    def _run_remotely(self, executor: RemoteExecutor, action: Action, material: KeyMaterial,
                      inputs: Mapping[str, FileDigest], started: float) -> Outcome | None:
        """The action run by the remote executor; None when it cannot be used and the build falls
        back to running it here (--remote-fallback)."""
        from mk.engine.remote_exec import RemoteExecutionFailed

        try:
            result, cached = executor.run(action, material.key, inputs, self.executor.cas)
        except RemoteExecutionFailed as e:
            if not executor.config.fallback:
                raise
            executor.give_up(str(e))
            return None
        status: Literal["executed", "cached"] = "cached" if cached else "executed"
        return Outcome(action, material, result, status, "remote", time.perf_counter() - started)


def _names_its_outputs(result: ActionResult, action: Action) -> bool:
    """A result is used only for the action whose outputs it names, in order: anything else
    (a damaged entry, say) is a miss, never outputs filed under the wrong names."""
    return len(result.outputs) == len(action.outputs) and all(
        o.path == a.path for o, a in zip(result.outputs, action.outputs, strict=True))
