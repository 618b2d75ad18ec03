"""What a build tells people (stderr progress, the summary line) and tools (--json-events)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from mk.engine.actions import Action
from mk.engine.rebuilder import Outcome

if TYPE_CHECKING:
    from mk.engine.profile import Profiler
    from mk.engine.progress import LiveProgress


@dataclass(frozen=True)
class Summary:
    targets: int
    actions: int
    executed: int
    cached_local: int
    cached_remote: int
    seconds: float
    platforms: tuple[str, ...] = ()  # the target platforms, when not the host's alone

    def line(self) -> str:
        cached = self.cached_local + self.cached_remote
        built_for = f", for {' and '.join(self.platforms)}" if self.platforms else ""
        return (
            f"mk: {self.targets} targets, {self.actions} actions: {self.executed} executed, "
            f"{cached} cached ({self.cached_local} local, {self.cached_remote} remote) "
            f"in {self.seconds:.2f} s{built_for}"
        )


class Reporter:
    """Shows progress and writes one JSON object per action to --json-events.

    On a terminal, progress is a live view (see progress.py); elsewhere (CI, pipes) it is one
    plain line per action that runs.
    """

    def __init__(
        self, total_actions: int, events: TextIO | None, stream: TextIO | None = None, profiler: Profiler | None = None,
        live: bool | None = None, transfer: Callable[[], str] | None = None,
    ) -> None:
        self.total = total_actions
        self.profiler = profiler
        self.events = events
        # sys.stderr as it is now: the build server sets it to its client's for each command.
        self.stream = stream = sys.stderr if stream is None else stream
        self.done = 0
        self._lock = threading.Lock()
        self._live_wanted = stream.isatty() if live is None else live
        self._live: LiveProgress | None = None
        self._transfer = transfer

    def started(self, action: Action) -> None:
        if self.profiler is not None:
            self.profiler.started(action)
        with self._lock:
            if self._live_wanted:
                if self._live is None:
                    from mk.engine.progress import LiveProgress

                    self._live = LiveProgress(self.total, self.stream, self._transfer)
                    self._live.executed, self._live.cached = 0, self.done
                self._live.started(action)
            else:
                # One write per line: a line printed by another thread cannot land inside it.
                self.stream.write(f"[{self.done}/{self.total}] {action.describe()}\n")

    def close(self) -> None:
        """Take the live view off the terminal, before the summary line is printed."""
        if self._live is not None:
            self._live.close()

    def finished(self, outcome: Outcome) -> None:
        if self.profiler is not None:
            self.profiler.finished(outcome)
        with self._lock:
            if self._live is not None:
                self._live.finished(outcome)
            self.done += 1
            if self.events is not None:
                event = {
                    "label": str(outcome.action.owner),
                    "mnemonic": outcome.action.mnemonic,
                    "key": outcome.key,
                    "status": outcome.status,
                    "origin": outcome.origin,
                    "duration": round(outcome.seconds, 6),
                    "outputs": [o.path for o in outcome.result.outputs],
                }
                self.events.write(json.dumps(event, sort_keys=True) + "\n")
