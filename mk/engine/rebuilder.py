"""The rebuilder decides *whether* an action runs: it runs only when no valid result is cached.

(The scheduler, separately, decides in what order; see "Build Systems à la Carte".)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mk.cache.action_cache import ActionResult, RecentResults
from mk.cache.local import LocalCache
from mk.cache.stat_cache import FileDigest
from mk.engine.actions import Action, action_key
from mk.engine.execute import Executor

if TYPE_CHECKING:
    from mk.cache.remote import RemoteCache


@dataclass(frozen=True)
class Outcome:
    action: Action
    key: str
    result: ActionResult
    status: Literal["executed", "cached"]
    origin: Literal["local", "remote"]
    seconds: float


class Rebuilder:
    def __init__(
        self,
        cache: LocalCache,
        executor: Executor,
        tool_digests: Mapping[str, str],
        recent: RecentResults | None = None,
        force: bool = False,
        remote: RemoteCache | None = None,
    ) -> None:
        self.cache = cache
        self.executor = executor
        self.tool_digests = tool_digests
        self.recent = recent
        self.force = force  # --check: run everything, whatever is cached
        self.remote = None if force else remote

    def key(self, action: Action, inputs: Mapping[str, FileDigest]) -> str:
        digests = {a.path: f"{inputs[a.path].digest}:{int(inputs[a.path].executable)}" for a in action.inputs}
        tools = {t: self.tool_digests[t] for t in action.host_tools}
        return action_key(action, digests, tools)

    def cached(self, action: Action, key: str) -> Outcome | None:
        """A result found without the network, or None.

        Either a local result whose every output blob is still present, or a result this machine
        got from the remote cache earlier (verified then), whose blobs are fetched when read.
        """
        if self.force:
            return None
        started = time.perf_counter()
        result = self._remembered(key) or self.cache.ac.get(key)
        if result is not None:
            # Blobs inherit recency from the results naming them (see cache.maintenance.gc).
            self.cache.ac.touch(key)
            if all(self.cache.cas.has(o.digest) for o in result.outputs):
                return Outcome(action, key, result, "cached", "local", time.perf_counter() - started)
        if self.remote is not None and (result := self.remote.remembered(key)) is not None:
            return Outcome(action, key, result, "cached", "remote", time.perf_counter() - started)
        return None

    def _remembered(self, key: str) -> ActionResult | None:
        """The last build's result for `key`, if its action-cache entry is still there unchanged."""
        remembered = self.recent.get(key) if self.recent else None
        if remembered is None or not self.cache.ac.has(key, size=remembered[1]):
            return None
        return remembered[0]

    def execute(
        self, action: Action, key: str, inputs: Mapping[str, FileDigest], on_start: Callable[[], None] | None = None
    ) -> Outcome:
        """Ask the remote cache (on a worker thread: it is a network round trip), else run it
        (calling `on_start` first)."""
        started = time.perf_counter()
        if self.remote is not None and (result := self.remote.lookup(key)) is not None:
            return Outcome(action, key, result, "cached", "remote", time.perf_counter() - started)
        if on_start is not None:
            on_start()
        written: list[str] | None = [] if self.remote is not None and self.remote.uploading else None
        result = self.executor.run(action, key, inputs, written)
        if not self.force:
            self.cache.ac.put(key, result)
        if written is not None and self.remote is not None:
            self.remote.upload(key, result, written)  # blobs first, then the signed result
        return Outcome(action, key, result, "executed", "local", time.perf_counter() - started)
