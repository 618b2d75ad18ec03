"""What the resident build server keeps between builds, and inotify's word on what changed since.

A process that builds once reads the analysed graph, the stat cache and the recent action results
from the cache and stats every file they name, since anything may have changed since it last ran.
The server instead watches the workspace (watchdog, inotify) and keeps them in memory:

- the graph of each request, while no file or folder its analysis looked at changed;
- the stat cache, with the files that inotify says are unchanged since they were last checked
  trusted without a stat (see StatCache.trusted);
- the recent results (the action-cache index of each graph);
- the result of the last successful build of each request: when nothing at all changed in the
  workspace since (its own writes to mk-out aside), the same request is answered from it, with
  no file even stat'ed.

Before each build it syncs with the watcher (as watchman does): it writes a cookie file into
mk-out and waits for its event, so that every change made before the command was typed has
been seen. A server starts knowing nothing: its first build checks everything, which also
covers the edits made while no server ran. The server sets the memory with `serving`; a build
in a process of its own (`--no-server`, CI) finds none and reads everything from disk.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mk.engine.workspace import OUTPUT_DIR

if TYPE_CHECKING:
    from watchdog.events import FileSystemEvent
    from watchdog.observers.api import BaseObserver

    from mk.cache.action_cache import RecentResults
    from mk.cache.stat_cache import StatCache

SYNC_SECONDS = 5.0
_COOKIE = ".mk-server-cookie-"
# Commands after which what the server remembers of builds may be wrong: they change the cache or
# mk-out behind the watcher's back, or took a path of the code that remembers nothing.
_BUILDS = frozenset({"build", "image"})


@dataclass(frozen=True)
class Change:
    path: str
    entries: bool  # the folder holding `path` gained or lost an entry (a create, delete or move)
    folder: bool  # `path` is a folder: everything under it may have changed too


@dataclass
class _Graph:
    graph: object
    observed: dict[str, bool]  # path -> its content or listing mattered (see GraphCache.observed)


class Memory:
    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.output_dir = str(workspace / OUTPUT_DIR)
        self._lock = threading.Lock()
        self._changes: list[Change] = []
        self._cookies: dict[str, threading.Event] = {}
        self._numbers = itertools.count()
        self._observer: BaseObserver | None = None
        self.graphs: dict[Path, _Graph] = {}
        self.stat_caches: dict[Path, StatCache] = {}
        self.recent: dict[Path, RecentResults] = {}
        self.last_builds: dict[object, Any] = {}  # request key -> its BuildResult
        self.previous: dict[object, Any] = {}  # request key -> its last successful build's LastBuild
        self.touched: dict[str, float] = {}  # action key -> when the server last marked it used (monotonic)
        # Writes of files that only later commands read, done in order on a thread of their own
        # while the client gets its answer; commands that read them wait for them (see `serving`).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mk-records")
        self._writes: list[Future[None]] = []

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        memory = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                memory._seen(event)

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.workspace), recursive=True)
        self._observer.start()

    def _seen(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write") or (event.is_directory and event.event_type == "modified"):
            return  # (a folder's own "modified" comes with the events of the entries that changed it)
        entries = event.event_type in ("created", "deleted", "moved")
        paths = [os.fsdecode(event.src_path)]
        if event.event_type == "moved":
            paths.append(os.fsdecode(event.dest_path))
        with self._lock:
            for path in paths:
                cookie = self._cookies.get(path)
                if cookie is not None:
                    cookie.set()
                elif os.path.basename(path).startswith(_COOKIE):
                    continue
                else:
                    self._changes.append(Change(path, entries, event.is_directory))

    @contextlib.contextmanager
    def serving(self, command: str) -> Iterator[None]:
        """Around one command of a client: builds in it use and update this memory."""
        global _current
        if self._observer is None:
            try:
                self.start()
            except OSError as e:  # out of inotify instances, say: then every build checks everything
                # (in the server's log: the command's output stays what it is without a server)
                print(f"mk: warning: the build server cannot watch {self.workspace} ({e}); every build checks "
                      "every file", file=sys.__stderr__, flush=True)
                self.forget()
        if command not in _BUILDS:
            self.wait_for_writes()
        self.apply(self.sync())
        _current = self
        try:
            yield
        finally:
            _current = None

    def settle(self, command: str) -> None:
        """After a command (once its client has the answer, before the next command): what it
        wrote into mk-out is its own doing, while sources edited meanwhile count."""
        if command not in _BUILDS:
            self.last_builds.clear()
        changes = self.sync()
        self.apply(changes, forget_builds=any(not self._in_outputs(c.path) for c in changes))

    def sync(self) -> list[Change]:
        """Every change made until now, once the watcher has seen them all (a cookie's round trip);
        a change it could not see for sure is reported as the whole workspace."""
        if self._observer is None or not self._observer.is_alive():
            return [Change(str(self.workspace), entries=True, folder=True)]
        number = next(self._numbers)
        cookie = f"{self.output_dir}/{_COOKIE}{os.getpid()}-{number}"
        seen = threading.Event()
        with self._lock:
            self._cookies[cookie] = seen
        try:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(cookie, "wb"):
                pass
            os.unlink(cookie)
            arrived = seen.wait(SYNC_SECONDS)
        except OSError:
            arrived = False
        with self._lock:
            del self._cookies[cookie]
            changes, self._changes = self._changes, []
        if not arrived:
            changes.append(Change(str(self.workspace), entries=True, folder=True))
        return changes

    def apply(self, changes: list[Change], forget_builds: bool = True) -> None:
        if not changes:
            return
        if forget_builds:
            self.last_builds.clear()
        files = [c.path for c in changes if not c.folder]
        folders = [c.path for c in changes if c.folder]
        for stat_cache in self.stat_caches.values():
            stat_cache.forget_trust(files, folders)
        stale = [file for file, kept in self.graphs.items() if any(_touches(c, kept.observed) for c in changes)]
        for file in stale:
            del self.graphs[file]

    def _in_outputs(self, path: str) -> bool:
        return path == self.output_dir or path.startswith(self.output_dir + "/")

    def later(self, write: Callable[[], None]) -> None:
        """Do `write` after the command, before any command that is not a build."""
        self._writes = [f for f in self._writes if not f.done()]
        self._writes.append(self._writer.submit(write))

    def wait_for_writes(self) -> None:
        """Every write `later` took is done (one that failed is said on stderr)."""
        writes, self._writes = self._writes, []
        for write in writes:
            if (error := write.exception()) is not None:
                print(f"mk: warning: the build server could not record a build: {error}", file=sys.stderr)

    def close(self) -> None:
        self.wait_for_writes()
        self._writer.shutdown()
        if self._observer is not None:
            self._observer.stop()

    def forget(self) -> None:
        self.graphs.clear()
        self.stat_caches.clear()
        self.recent.clear()
        self.last_builds.clear()
        self.previous.clear()

    def graph(self, file: Path, load: Callable[[], object], observed: Callable[[], dict[str, bool] | None]) -> Any:
        """The graph saved in `file`, kept while nothing its analysis looked at changed; else
        `load()` (from the graph cache, or analysing) and remembered with what it `observed`."""
        kept = self.graphs.get(file)
        if kept is not None:
            return kept.graph
        graph = load()
        paths = observed()
        if paths is not None:
            self.graphs[file] = _Graph(graph, paths)
        return graph

    def stat_cache(self, file: Path, make: Callable[[], StatCache]) -> StatCache:
        if file not in self.stat_caches:
            stat_cache = make()
            stat_cache.trusted = set()
            self.stat_caches[file] = stat_cache
        return self.stat_caches[file]

    def recent_results(self, file: Path, make: Callable[[], RecentResults]) -> RecentResults:
        if file not in self.recent:
            recent = make()
            recent.verified = {}
            self.recent[file] = recent
        return self.recent[file]


def _touches(change: Change, observed: dict[str, bool]) -> bool:
    """Whether analysis could see `change`: a path it looked at, a folder it listed gaining or
    losing an entry, or a folder holding something it looked at."""
    whole = observed.get(change.path)
    if whole is not None and (whole or change.entries):  # (for some paths, only whether they exist counted)
        return True
    if change.entries and observed.get(os.path.dirname(change.path), False):
        return True
    if change.folder:
        prefix = change.path + "/"
        return any(path.startswith(prefix) for path in observed)
    return False


_current: Memory | None = None


def current() -> Memory | None:
    """The server's memory while it runs a command; None in a process of its own."""
    return _current
