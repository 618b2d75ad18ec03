"""The rebuilder decides *whether* an action runs: it runs only when no valid result is cached.

(The scheduler, separately, decides in what order; see "Build Systems à la Carte".)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mk.cache.action_cache import ActionResult, RecentResults
from mk.cache.local import LocalCache
from mk.cache.stat_cache import FileDigest
from mk.engine.actions import Action, action_key
from mk.engine.execute import Executor


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
    ) -> None:
        self.cache = cache
        self.executor = executor
        self.tool_digests = tool_digests
        self.recent = recent
        self.force = force  # --check: run everything, whatever is cached

    def key(self, action: Action, inputs: Mapping[str, FileDigest]) -> str:
        digests = {a.path: f"{inputs[a.path].digest}:{int(inputs[a.path].executable)}" for a in action.inputs}
        tools = {t: self.tool_digests[t] for t in action.host_tools}
        return action_key(action, digests, tools)

    def cached(self, action: Action, key: str) -> Outcome | None:
        """A cached result whose every output blob is still present, or None."""
        if self.force:
            return None
        started = time.perf_counter()
        result = self._remembered(key) or self.cache.ac.get(key)
        if result is None:
            return None
        # Blobs inherit recency from the results naming them (see cache.maintenance.gc).
        self.cache.ac.touch(key)
        if not all(self.cache.cas.has(o.digest) for o in result.outputs):
            return None
        return Outcome(action, key, result, "cached", "local", time.perf_counter() - started)

    def _remembered(self, key: str) -> ActionResult | None:
        """The last build's result for `key`, if its action-cache entry is still there unchanged."""
        remembered = self.recent.get(key) if self.recent else None
        if remembered is None or not self.cache.ac.has(key, size=remembered[1]):
            return None
        return remembered[0]

    def execute(self, action: Action, key: str, inputs: Mapping[str, FileDigest]) -> Outcome:
        started = time.perf_counter()
        result = self.executor.run(action, key, inputs)
        if not self.force:
            self.cache.ac.put(key, result)
        return Outcome(action, key, result, "executed", "local", time.perf_counter() - started)
