"""What a build tells people (stderr progress, the summary line) and tools (--json-events)."""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from typing import TextIO

from mk.engine.actions import Action
from mk.engine.rebuilder import Outcome


@dataclass(frozen=True)
class Summary:
    targets: int
    actions: int
    executed: int
    cached_local: int
    cached_remote: int
    seconds: float

    def line(self) -> str:
        cached = self.cached_local + self.cached_remote
        return (
            f"mk: {self.targets} targets, {self.actions} actions: {self.executed} executed, "
            f"{cached} cached ({self.cached_local} local, {self.cached_remote} remote) "
            f"in {self.seconds:.2f} s"
        )


class Reporter:
    """Prints a line per executed action and writes one JSON object per action to --json-events."""

    def __init__(self, total_actions: int, events: TextIO | None, stream: TextIO = sys.stderr) -> None:
        self.total = total_actions
        self.events = events
        self.stream = stream
        self.done = 0
        self._lock = threading.Lock()

    def started(self, action: Action) -> None:
        with self._lock:
            print(f"[{self.done}/{self.total}] {action.describe()}", file=self.stream)

    def finished(self, outcome: Outcome) -> None:
        with self._lock:
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
