"""`mk watch`: rebuild whenever something the targets depend on changes.

The watch set is what the last analysis looked at (BUILD, .bzl and mk.toml files, folders it
listed for glob() or //...) plus the source files the kept actions read. Folders are watched,
not files (one inotify watch each); events for paths outside the set are dropped. The set is
recomputed after every build, so an edited BUILD file adds or drops what it names.

inotify's instances and watches are limited per user, system-wide: where none is left, `mk watch`
says so and checks the same folders by polling instead.
"""

from __future__ import annotations

import os
import queue
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from mk.cache.stat_cache import RACY_NS
from mk.engine.build import BuildOptions, BuildResult, analyse
from mk.engine.errors import MkError
from mk.engine.graph import graph_key
from mk.engine.graph_cache import GraphCache
from mk.engine.platforms import requested
from mk.engine.session import Session

DEBOUNCE_SECONDS = 0.1
POLL_SECONDS = 0.5  # how often the watched folders are listed when inotify is not available


@dataclass(frozen=True)
class WatchSet:
    files: frozenset[str]  # absolute paths whose content (or existence) matters
    folders: frozenset[str]  # absolute paths of folders whose list of entries matters

    def folders_to_watch(self) -> set[str]:
        wanted = {os.path.dirname(f) for f in self.files} | set(self.folders)
        return {_existing_ancestor(folder) for folder in wanted}

    def relevant(self, path: str, entries_changed: bool) -> bool:
        return path in self.files or (entries_changed and os.path.dirname(path) in self.folders)


def _existing_ancestor(folder: str) -> str:
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def watch_set(session: Session, patterns: Sequence[str]) -> WatchSet | None:
    """What the last build of `patterns` depended on, or None when it never got through analysis."""
    workspace = session.workspace
    platforms = requested((), workspace.settings.platform)
    graph_cache = GraphCache(session.cache.root, workspace.root, graph_key(patterns, (), platforms))
    observed = graph_cache.observed()
    if observed is None:
        return None
    try:
        # the cached graph: nothing changed since
        graph = analyse(workspace, session.registry, graph_cache, patterns, platforms=platforms)
    except MkError:
        return None
    root = str(workspace.root)
    files = {f"{root}/{s.path}" for s in graph.sources}
    folders = set()
    for path, whole in observed.items():
        if whole and os.path.isdir(path):
            folders.add(path)
        else:
            files.add(path)
    return WatchSet(frozenset(files), frozenset(folders))


class _Handler(FileSystemEventHandler):
    def __init__(self, changes: queue.Queue[tuple[str, bool]]) -> None:
        self.changes = changes

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type == "modified":
            return
        entries_changed = event.event_type in ("created", "deleted", "moved")
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self.changes.put((os.fsdecode(path), entries_changed))


def _inotify_or_polling() -> BaseObserver:
    try:
        return Observer()  # one inotify instance, for every watch
    except OSError as e:
        return _polling(e)


def _polling(inotify_error: OSError) -> BaseObserver:
    print(f"mk watch: warning: inotify is not available ({inotify_error.strerror or inotify_error}); listing the "
          f"watched folders every {POLL_SECONDS:g} s instead (raise the sysctls fs.inotify.max_user_instances and "
          "fs.inotify.max_user_watches to watch with inotify)", file=sys.stderr, flush=True)
    return PollingObserver(timeout=POLL_SECONDS)


class Watcher:
    def __init__(self, session: Session, patterns: Sequence[str], jobs: int,
                 out: TextIO = sys.stdout, after_success: Callable[[BuildResult], None] | None = None) -> None:
        self.session, self.workspace, self.cache = session, session.workspace, session.cache
        self.patterns, self.jobs, self.out = patterns, jobs, out
        self.after_success = after_success  # `mk watch --run`: reboot the VM
        self.changes: queue.Queue[tuple[str, bool]] = queue.Queue()
        self.observer = _inotify_or_polling()
        self.watches: dict[str, ObservedWatch] = {}
        self.current: WatchSet | None = None
        self.ignored = (str(self.workspace.output_dir) + os.sep, str(self.cache.root) + os.sep)

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def run(self) -> None:
        self.observer.start()
        try:
            changed = self.rebuild()
            while True:
                changed = changed or self.wait_for_changes()
                shown = sorted(os.path.relpath(p, self.workspace.root) for p in changed)
                self.say(f"mk watch: changed {', '.join(shown)}")
                changed = self.rebuild()
        finally:
            self.observer.stop()
            self.observer.join()

    def rebuild(self) -> set[str]:
        """Build, then watch what the build depended on; returns the files edited meanwhile.

        Watches are set up only once the build says what it depends on, so an edit made while it
        ran is found by its modification time instead, and starts the next build at once."""
        started = time.perf_counter()
        started_ns = time.time_ns() - RACY_NS  # a file system's clock may lag a little behind
        try:
            platforms = requested((), self.workspace.settings.platform)
            result = self.session.build(tuple(self.patterns), BuildOptions(jobs=self.jobs, isolated_loading=True,
                                                                           platforms=platforms))
        except MkError as e:
            print(str(e), file=sys.stderr, flush=True)
            self.say("mk watch: build failed; waiting for the next change")
        else:
            for _action, error in result.schedule.failures:
                print(error if isinstance(error, MkError) else f"error: {error}", file=sys.stderr, flush=True)
            ran = [o.action.describe() for o in result.schedule.outcomes if o.status == "executed"]
            ran += [f"{action.describe()} (failed)" for action, _ in result.schedule.failures]
            self.say(result.summary.line())
            self.say(f"mk watch: ran {', '.join(sorted(ran))}" if ran else "mk watch: nothing ran")
            state = "failed" if result.schedule.failures else "done"
            self.say(f"mk watch: {state} in {time.perf_counter() - started:.2f} s")
            if not result.schedule.failures and self.after_success is not None:
                self.after_success(result)  # a failed build leaves the previous VM running
        self.rewatch()
        edited = self._edited_since(started_ns)
        if edited:
            # The next build starts at once and reads every file as it is now: the events of
            # these edits (and of any other made since) would only start another build after it.
            self._drain()
        # Said last: whoever waits for this line and then edits a file is seen by the watches alone.
        self.say(f"mk watch: watching {len(self.current.files) if self.current else 0} files in "
                 f"{len(self.watches)} folders; Ctrl-C stops")
        return edited

    def _drain(self) -> None:
        while True:
            try:
                self.changes.get_nowait()
            except queue.Empty:
                return

    def _edited_since(self, when_ns: int) -> set[str]:
        edited, now = set(), time.time_ns()
        for path in self.current.files if self.current is not None else ():
            try:
                mtime = os.stat(path).st_mtime_ns
                # (A file dated in the future would otherwise start a build after every build.)
                if when_ns <= mtime <= now and not path.startswith(self.ignored):
                    edited.add(path)
            except OSError:
                continue
        return edited

    def rewatch(self) -> None:
        """Watch what the last build depended on (the previous set if analysis failed)."""
        new = watch_set(self.session, self.patterns)
        if new is not None:
            self.current = new
        if self.current is None:
            self.current = WatchSet(frozenset({str(self.workspace.root / "mk.toml")}), frozenset())
        wanted = self.current.folders_to_watch()
        for folder in set(self.watches) - wanted:
            self.observer.unschedule(self.watches.pop(folder))
        for folder in sorted(wanted - set(self.watches)):
            try:
                self.watches[folder] = self.observer.schedule(_Handler(self.changes), folder, recursive=False)
            except OSError as e:  # no inotify instance or watch left for this user
                if isinstance(self.observer, PollingObserver):
                    raise
                self._poll_instead(e)
                self.watches[folder] = self.observer.schedule(_Handler(self.changes), folder, recursive=False)

    def _poll_instead(self, error: OSError) -> None:
        """Move every watch to a polling observer, for good."""
        self.observer.stop()
        self.observer.join()
        self.observer = _polling(error)
        self.observer.start()
        for folder in self.watches:
            self.watches[folder] = self.observer.schedule(_Handler(self.changes), folder, recursive=False)

    def _relevant(self, path: str, entries_changed: bool) -> bool:
        if path.startswith(self.ignored) or self.current is None:
            return False
        return self.current.relevant(path, entries_changed)

    def wait_for_changes(self) -> set[str]:
        """Block until something relevant changes, then until things are quiet for a moment."""
        changed: set[str] = set()
        while not changed:
            try:
                path, entries = self.changes.get(timeout=0.5)
            except queue.Empty:
                continue
            if self._relevant(path, entries):
                changed.add(path)
        while True:
            try:
                path, entries = self.changes.get(timeout=DEBOUNCE_SECONDS)
            except queue.Empty:
                return changed
            if self._relevant(path, entries):
                changed.add(path)


def watch(
    session: Session, patterns: Sequence[str], jobs: int, after_success: Callable[[BuildResult], None] | None = None,
) -> None:
    Watcher(session, patterns, jobs, after_success=after_success).run()
