"""A live view of a build on a terminal: the running actions, with how long each has run, and the
executed and cached counts. rich draws it; it is only loaded when something actually runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.live import Live

from mk.engine.actions import Action
from mk.engine.rebuilder import Outcome

_SHOWN = 8  # running actions listed; more are counted


class LiveProgress:
    def __init__(self, total: int, stream: TextIO, transfer: Callable[[], str] | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.total = total
        self.transfer = transfer  # the remote cache's bytes so far, when there is one
        self.running: dict[int, tuple[str, float]] = {}
        self.executed = self.cached = 0
        self._lock = threading.Lock()
        self._live: Live = Live(get_renderable=self._render, console=Console(file=stream, force_terminal=True),
                                refresh_per_second=8, transient=True)
        self._live.start()

    def started(self, action: Action) -> None:
        with self._lock:
            self.running[id(action)] = (action.describe(), time.monotonic())

    def finished(self, outcome: Outcome) -> None:
        with self._lock:
            self.running.pop(id(outcome.action), None)
            if outcome.status == "executed":
                self.executed += 1
            else:
                self.cached += 1

    def close(self) -> None:
        self._live.stop()

    def _render(self) -> RenderableType:
        from rich.text import Text

        with self._lock:
            done = self.executed + self.cached
            text = Text(f"mk: {done}/{self.total} actions ({self.executed} executed, {self.cached} cached), "
                        f"{len(self.running)} running\n", style="bold")
            now = time.monotonic()
            for name, started in sorted(self.running.values(), key=lambda r: r[1])[:_SHOWN]:
                text.append(f"  {name}  {now - started:5.1f} s\n")
            if len(self.running) > _SHOWN:
                text.append(f"  ... and {len(self.running) - _SHOWN} more\n")
            if self.transfer is not None:
                text.append(f"{self.transfer()}\n")
        return text
