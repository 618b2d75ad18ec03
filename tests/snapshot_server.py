"""A fake snapshot archive on loopback HTTP, answering as Debian's does.

- `/archive/<archive>/<time>/<path>`: the file as the archive was at `time`; a time between two
  snapshots is redirected to the latest snapshot before it (none before it: 404);
- `/mr/timestamp/?archive=<archive>`: `{"result": {"<archive>": [times, oldest first]}}`, or
  whatever `answer` is set to (to serve nonsense).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

from debrepo import SnapshotArchive

_TIMED = re.compile(r"/archive/(?P<archive>[a-z-]+)/(?P<time>[0-9]{8}T[0-9]{6}Z)(?P<rest>/.*)")


@dataclass
class SnapshotServer:
    url: str
    requested: list[str] = field(default_factory=list)  # every GET's path, in order
    answer: bytes | None = None  # what /mr/timestamp/ says instead of the truth


class _Handler(http.server.SimpleHTTPRequestHandler):
    archive: SnapshotArchive
    state: SnapshotServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.state.requested.append(self.path)
        parts = urllib.parse.urlsplit(self.path)
        if parts.path.rstrip("/") == "/mr/timestamp":
            archive = urllib.parse.parse_qs(parts.query).get("archive", ["debian"])[0]
            body = self.state.answer or json.dumps({"result": {archive: self.archive.times}}).encode()
            self._send(200, body, "application/json")
            return
        timed = _TIMED.fullmatch(parts.path)
        if timed and timed["time"] not in self.archive.times:
            before = [t for t in self.archive.times if t <= timed["time"]]
            if not before:
                self._send(404, b"no snapshot that early\n")
                return
            self.send_response(302)
            self.send_header("Location", f"/archive/{timed['archive']}/{before[-1]}{timed['rest']}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def snapshot_serving(archive: SnapshotArchive) -> Iterator[SnapshotServer]:
    archive.root.mkdir(parents=True, exist_ok=True)
    state = SnapshotServer("")
    handler = type("Handler", (_Handler,), {"archive": archive, "state": state})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(archive.root)))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
