"""`mk build --profile FILE`: a Chrome trace-event JSON of the build, one track per worker.

It opens in Perfetto (ui.perfetto.dev) or chrome://tracing: each action is a complete ("X")
event on the track of the worker thread that ran it, or that found it in a cache (named and
categorised "cached").
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from mk.engine.actions import Action
from mk.engine.rebuilder import Outcome


class Profiler:
    def __init__(self) -> None:
        self.origin = time.perf_counter()
        self._lock = threading.Lock()
        self._running: dict[int, tuple[float, int]] = {}  # id(action) -> (start, tid)
        self._tids: dict[str, int] = {}
        self.events: list[dict[str, object]] = []

    def started(self, action: Action) -> None:
        """Called on the worker thread, just before the action runs."""
        now = time.perf_counter()
        name = threading.current_thread().name
        with self._lock:
            tid = self._tids.setdefault(name, len(self._tids) + 1)
            self._running[id(action)] = (now, tid)

    def finished(self, outcome: Outcome) -> None:
        """An executed action spans its run; one found in a cache (never started) spans the lookup,
        marked "cached", so even a no-op build's trace shows every action it considered."""
        now = time.perf_counter()
        with self._lock:
            begun = self._running.pop(id(outcome.action), None)
            if begun is None:
                tid = self._tids.setdefault(threading.current_thread().name, len(self._tids) + 1)
                begun = (now - outcome.seconds, tid)
            start, tid = begun
            cached = outcome.status == "cached"
            self.events.append({
                "name": outcome.action.describe() + (" (cached)" if cached else ""),
                "cat": "cached" if cached else outcome.action.mnemonic,
                "ph": "X",
                "ts": round((start - self.origin) * 1e6),
                "dur": round((max(start, now) - start) * 1e6),
                "pid": 1,
                "tid": tid,
                "args": {"label": str(outcome.action.owner), "key": outcome.key, "status": outcome.status,
                         "origin": outcome.origin},
            })

    def trace(self) -> dict[str, object]:
        metadata: list[dict[str, object]] = [
            {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "mk build"}}
        ]
        metadata += [
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}}
            for name, tid in sorted(self._tids.items(), key=lambda item: item[1])
        ]
        return {"traceEvents": metadata + sorted(self.events, key=lambda e: (e["tid"], e["ts"])),
                "displayTimeUnit": "ms"}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.trace(), indent=None) + "\n", encoding="utf-8")
