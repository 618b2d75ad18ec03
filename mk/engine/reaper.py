"""Stops what mk started when mk itself dies, even by SIGKILL, which leaves it no time to clean up.

The reaper is a small child process, in a session of its own (so a Ctrl-C meant for mk does not
reach it), reading a pipe from mk: "+PGID" when mk starts a command in a new process group,
"-PGID" when that command has ended. When the pipe closes while groups are still listed, mk has
died, and the reaper kills each of them.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import IO

_REAPER = """
import os, signal, sys
groups = set()
for line in sys.stdin:
    (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""


class Reaper:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipe: IO[str] | None = None

    def watch(self, group: int) -> None:
        self._send(f"+{group}\n")

    def forget(self, group: int) -> None:
        self._send(f"-{group}\n")

    def _send(self, line: str) -> None:
        with self._lock:
            if self._pipe is None:  # started with the first command: a build that runs none needs none
                reaper = subprocess.Popen([sys.executable, "-S", "-c", _REAPER], stdin=subprocess.PIPE, text=True,
                                          start_new_session=True, stdout=subprocess.DEVNULL)
                self._pipe = reaper.stdin
            assert self._pipe is not None
            self._pipe.write(line)
            self._pipe.flush()
