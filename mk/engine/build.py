"""`mk build`: load, analyse, hash sources, schedule, place outputs, summarise."""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from mk.cache.action_cache import RecentResults
from mk.cache.cas import ContentStore, CorruptBlobError, MissingBlobError
from mk.cache.local import LocalCache
from mk.cache.stat_cache import FileDigest, StatCache
from mk.engine.actions import Action, Artifact
from mk.engine.build_logs import BuildLogs
from mk.engine.errors import MkError
from mk.engine.execute import ActionFailed, Executor
from mk.engine.explain import ExplainLog, identity
from mk.engine.graph import Graph, analyse_here, graph_key
from mk.engine.graph_cache import GraphCache
from mk.engine.keys import KeyMaterial
from mk.engine.memory import current as current_memory
from mk.engine.outputs import placing, sweep_interrupted, up_to_date
from mk.engine.platforms import Platform
from mk.engine.rebuilder import Outcome, Rebuilder
from mk.engine.registry import Registry
from mk.engine.report import Reporter, Summary
from mk.engine.scheduler import ScheduleResult, run_actions
from mk.engine.tree_history import TreeHistory
from mk.engine.workspace import OUTPUT_DIR, Workspace

if TYPE_CHECKING:
    from mk.cache.cas import BlobFetcher
    from mk.cache.remote import RemoteCache, RemoteConfig
    from mk.engine.profile import Profiler
    from mk.engine.remote_config import ExecutorConfig
    from mk.engine.remote_exec import RemoteExecutor
    from mk.engine.rule_api import Providers

# A corrupt blob found mid-build is deleted; the next attempt rebuilds whatever needed it.
_ATTEMPTS = 3


@dataclass(frozen=True)
class BuildOptions:
    jobs: int = os.cpu_count() or 1
    keep_going: bool = False
    force: bool = False
    events: TextIO | None = None
    output_groups: tuple[str, ...] = ()  # extra outputs to build, e.g. ("tar",) for an image
    remote: RemoteConfig | None = None  # a shared remote cache (see engine.remote_config)
    profiler: Profiler | None = None  # --profile: records when and where each action ran
    isolated_loading: bool = False  # evaluate BUILD files in a bounded child process (see `isolated`)
    sandbox_debug: bool = False  # keep each command's sandbox and print how it was made
    executor: ExecutorConfig | None = None  # a remote executor (see engine.remote_exec)
    platforms: tuple[Platform, ...] = ()  # the target platforms (see engine.platforms); none: the host's


@dataclass(frozen=True)
class BuildResult:
    summary: Summary
    outputs: tuple[str, ...]  # relative to the workspace root
    schedule: ScheduleResult
    requested_providers: bytes  # see Graph

    @property
    def providers(self) -> Mapping[str, Providers]:
        """The providers of each requested target, by label."""
        found: Mapping[str, Providers] = pickle.loads(self.requested_providers)
        return found


# How often the build server marks a result it keeps using as used. gc evicts the least recently
# used first, so a result in use is at most this far behind in its order (and one gc removes
# anyway is found missing and made again: see `RecentResults.verified`).
TOUCH_SECONDS = 600.0


@dataclass(frozen=True)
class LastBuild:
    """What the build server keeps of a request's last successful build, for the next one."""

    graph: Graph
    readers: Mapping[str, list[Action]]  # path -> the actions reading it
    sources: Mapping[str, FileDigest]
    schedule: ScheduleResult


def analyse(
    workspace: Workspace, registry: Registry, graph_cache: GraphCache, patterns: Sequence[str],
    groups: Sequence[str] = (), cache: LocalCache | None = None, platforms: tuple[Platform, ...] = (),
) -> Graph:
    """The analysed graph, reused from the last build when no BUILD, .bzl or source moved.

    Given the `cache` (for a scratch folder), BUILD files are evaluated in a child process bounded
    in memory and time (see `isolated`); `mk build` does so."""
    cached = graph_cache.load(Graph)
    if cached is not None:
        return cached
    if cache is not None:
        from mk.engine.isolated import analyse_in_child

        with cache.scratch_dir("analysis") as scratch:
            return analyse_in_child(workspace, registry, graph_cache, patterns, groups, scratch, platforms)
    return analyse_here(workspace, registry, graph_cache, patterns, groups, platforms=platforms)


def build(
    workspace: Workspace, cache: LocalCache, patterns: Sequence[str], options: BuildOptions, registry: Registry
) -> BuildResult:
    started = time.perf_counter()
    graph_cache = GraphCache(cache.root, workspace.root, graph_key(patterns, options.output_groups, options.platforms))
    memory = current_memory()
    request = _request_key(workspace, cache, graph_cache, options) if memory is not None else None
    if memory is not None and request is not None and (last := memory.last_builds.get(request)) is not None:
        return _again(last, started)  # nothing changed since: the server answers without a stat

    def load() -> Graph:
        return analyse(workspace, registry, graph_cache, patterns, options.output_groups,
                       cache if options.isolated_loading else None, options.platforms)

    executor = _open_executor(workspace, cache, options)
    if executor is not None:
        executor.connect_soon()  # while the graph loads
    try:
        if memory is None:
            graph = load()
            recent = RecentResults(graph_cache.results_file)
            stats = cache.stat_cache(workspace.root)
        else:
            graph = memory.graph(graph_cache.file, load, graph_cache.observed)
            recent = memory.recent_results(graph_cache.results_file, lambda: RecentResults(graph_cache.results_file))
            stats = memory.stat_cache(cache.root, lambda: cache.stat_cache(workspace.root))
        cache.sweep_stale_scratch()
        remote = _open_remote(cache, options)
    except BaseException:
        if executor is not None:
            executor.close()
        raise
    with cache.lock():
        try:
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    # A retry trusts no remembered result: each is checked whole (tree contents
                    # too), so whatever lost a blob is rebuilt.
                    first = attempt == 1
                    schedule, outputs = _attempt(workspace, cache, stats, graph, recent if first else None,
                                                  options, remote, executor, registry.source_urls(workspace.settings),
                                                  started, request if first else None)
                    break
                except (CorruptBlobError, MissingBlobError) as e:
                    if attempt == _ATTEMPTS:
                        raise BuildAborted(f"the local cache keeps losing blobs: {e}",
                                           _summary(graph, [], started)) from None
                    print(f"mk: warning: {e}; rebuilding what needed it", file=sys.stderr)
        finally:
            stats.save()
            if remote is not None:
                _close_remote(cache, remote)
            if executor is not None:
                executor.close()
                if (line := executor.report()) is not None:
                    print(line, file=sys.stderr)
    if graph.host_tool_commands:
        _warn_if_not_hermetic(workspace, schedule.outcomes)
    result = BuildResult(_summary(graph, schedule.outcomes, started), outputs, schedule, graph.requested_providers)
    if memory is not None and request is not None and not schedule.failures:
        memory.last_builds[request] = result
    return result


def _request_key(workspace: Workspace, cache: LocalCache, graph_cache: GraphCache, options: BuildOptions) -> object:
    """What a build's result depends on besides the files the server watches, or None for a build
    the server must not answer from memory (it writes events or a profile, or uses remotes)."""
    if options.force or options.events is not None or options.profiler is not None or options.remote is not None \
            or options.executor is not None or options.sandbox_debug:
        return None
    settings = sorted((k, v) for k, v in os.environ.items() if k.startswith("MK_"))
    # The host's tools count in the keys of commands run on them (toolchain = "host").
    try:
        host = os.stat(workspace.settings.host_package_database)
        host_tools: object = (host.st_mtime_ns, host.st_size, host.st_ino)
    except OSError:
        host_tools = None
    return (graph_cache.file, str(cache.root), tuple(settings), host_tools)


def _again(last: BuildResult, started: float) -> BuildResult:
    """The last build of the same request, as a no-op build reports it: every action cached."""
    summary = dataclasses.replace(last.summary, executed=0, cached_local=len(last.schedule.outcomes),
                                  cached_remote=0, seconds=time.perf_counter() - started)
    return dataclasses.replace(last, summary=summary)


def _warn_if_not_hermetic(workspace: Workspace, outcomes: Sequence[Outcome]) -> None:
    """Said whenever a command ran on the host's tools (a build that ran none is quiet)."""
    count = sum(o.status == "executed" and o.action.runs_on_host_tools for o in outcomes)
    if count:
        settings = workspace.settings
        kept = "uploaded, as remote_upload_host_results asks" if settings.remote_upload_host_results \
            else "kept out of remote caches"
        print(f"mk: warning: this build is not hermetic: {count} command{'s' if count > 1 else ''} ran on the "
              f"host's tools (toolchain = \"host\"), keyed by {settings.host_package_database}; their results are "
              f"{kept}", file=sys.stderr)


class BuildAborted(MkError):
    """The build gave up after analysis: the summary line still counts the targets and actions."""

    def __init__(self, message: str, summary: Summary) -> None:
        super().__init__(message)
        self.summary = summary


def _summary(graph: Graph, outcomes: Sequence[Outcome], started: float) -> Summary:
    return Summary(
        targets=graph.target_count,
        actions=len(graph.actions),
        executed=sum(o.status == "executed" for o in outcomes),
        cached_local=sum(o.status == "cached" and o.origin == "local" for o in outcomes),
        cached_remote=sum(o.status == "cached" and o.origin == "remote" for o in outcomes),
        seconds=time.perf_counter() - started,
        platforms=graph.platforms,
    )


def _open_remote(cache: LocalCache, options: BuildOptions) -> RemoteCache | None:
    """The remote cache, if one is configured; blobs missing locally are then read from it."""
    if options.remote is None or options.force:
        return None
    from mk.cache.remote import RemoteCache

    return RemoteCache(options.remote, cache, events=options.events)


def _open_executor(workspace: Workspace, cache: LocalCache, options: BuildOptions) -> RemoteExecutor | None:
    """The remote executor, if one is configured (--check runs everything here)."""
    if options.executor is None or options.force:
        return None
    from mk.engine.remote_exec import RemoteExecutor

    return RemoteExecutor(options.executor, cache, str(workspace.root), options.jobs)


class _FirstOf:
    """Blobs missing locally, read from the remote cache, else from the remote executor."""

    def __init__(self, fetchers: Sequence[BlobFetcher]) -> None:
        self.fetchers = fetchers

    def fetch(self, digest: str) -> bool:
        return any(f.fetch(digest) for f in self.fetchers)

    def fetch_many(self, digests: Iterable[str]) -> None:
        wanted = list(digests)
        for fetcher in self.fetchers:
            fetcher.fetch_many(wanted)


def _close_remote(cache: LocalCache, remote: RemoteCache) -> None:
    """Wait for the uploads (unless interrupted) and say what was transferred."""
    remote.close(wait=not isinstance(sys.exc_info()[1], KeyboardInterrupt))
    if (line := remote.report()) is not None:
        print(line, file=sys.stderr)


def _attempt(
    workspace: Workspace, cache: LocalCache, stats: StatCache, graph: Graph, recent: RecentResults | None,
    options: BuildOptions, remote: RemoteCache | None, executor: RemoteExecutor | None,
    source_urls: Callable[[str], tuple[str, ...]], started: float, request: object | None = None,
) -> tuple[ScheduleResult, tuple[str, ...]]:
    """One attempt at the build. Given the `request` key (in the build server, on a first attempt),
    only the actions downstream of the sources that changed since the last build of the same
    request are considered; the others keep their outcome of then (see `_unchanged`)."""
    # Blobs missing here are read from the remote cache and the remote executor, if this build has them.
    fetchers = [f for f in (remote, executor) if f is not None]
    cas = cache.cas.with_fetcher(fetchers[0] if len(fetchers) == 1 else _FirstOf(fetchers)) if fetchers \
        else cache.cas
    sources = _hash_sources(workspace, stats, graph)
    host_identity = _host_identity(stats, workspace.settings.host_package_database) \
        if graph.host_tool_commands else None
    local = Executor(cache, cas, workspace.root, source_urls, remote, sandbox_debug=options.sandbox_debug,
                     jobs=options.jobs)
    if remote is not None:
        remote.stop_with(local.processes.cancelled)  # Ctrl-C cuts remote transfers too
    rebuilder = Rebuilder(cache, local, host_identity, recent, force=options.force, remote=remote,
                          upload_host_results=workspace.settings.remote_upload_host_results,
                          remote_executor=executor)
    transfer = remote.stats.brief if remote is not None else None
    reporter = Reporter(len(graph.actions), options.events, profiler=options.profiler, transfer=transfer)
    memory = current_memory()
    previous = memory.previous.get(request) if memory is not None and request is not None else None
    actions: Sequence[Action] = graph.actions
    known, kept = dict(sources), list[Outcome]()
    readers = None
    if previous is not None and previous.graph is graph:
        readers = previous.readers
        actions, kept = _unchanged(graph.actions, readers, previous.sources, sources, previous.schedule)
        known = {**previous.schedule.files, **sources}
        reporter.done = len(kept)
    try:
        with cache.scratch_removal_held():
            schedule = run_actions(
                actions, known, rebuilder, options.jobs, options.keep_going,
                reporter.finished, reporter.started, executor.config.jobs if executor is not None else 0,
            )
    finally:
        reporter.close()
    # What this build considered itself: the kept outcomes are recorded as they were already.
    considered, fresh = list(schedule.considered), list(schedule.outcomes)
    if kept:
        schedule.outcomes[:0] = kept
        schedule.considered[:0] = [(o.action, o.material) for o in kept]
    if memory is not None and request is not None:
        if schedule.failures:
            memory.previous.pop(request, None)
        else:
            memory.previous[request] = LastBuild(graph, readers or _readers(graph.actions), sources, schedule)
    for warning in local.warnings:
        print(warning, file=sys.stderr)

    def bookkeeping() -> None:
        """What only later commands read: the recent results, `mk explain`'s and `mk log`'s records."""
        if not schedule.failures and not options.force and recent is not None:
            recent.save({o.key: o.result for o in schedule.outcomes})
        if not options.force:
            _record_explain(cache, workspace, considered, fresh, schedule.failures)
            BuildLogs(cache.root, workspace.root).record(fresh, [
                (identity(action), e.log) for action, e in schedule.failures if isinstance(e, ActionFailed) and e.log])

    memory = current_memory()
    if memory is not None:
        def used() -> None:
            """Results the server trusted from memory are touched too, for gc's least-recently-used
            order; not on every build, which would touch 10,000 files for a one-leaf rebuild."""
            now = time.monotonic()
            for outcome in schedule.outcomes:
                if outcome.status == "cached" and outcome.origin == "local" and \
                        now - memory.touched.get(outcome.key, -TOUCH_SECONDS) >= TOUCH_SECONDS:
                    cache.ac.touch(outcome.key)
                    memory.touched[outcome.key] = now

        memory.later(bookkeeping)  # the server does it while the client gets its answer
        memory.later(used)
    else:
        bookkeeping()
    if not options.force:
        TreeHistory(cache.root, workspace.root).record(
            {o.path: o.digest for outcome in schedule.outcomes for o in outcome.result.outputs if o.tree})
    corrupt = [e for _, e in schedule.failures if isinstance(e, CorruptBlobError | MissingBlobError)]
    if corrupt:
        raise corrupt[0]
    artifacts = dict.fromkeys(graph.requested_files)
    placement = graph.placement
    if schedule.failures:  # --keep-going: still place what was built, as Bazel does
        artifacts = dict.fromkeys(a for a in artifacts if a.path in schedule.files)
        placement = placement.given(schedule.files)
    if fetchers:  # download what must be placed in parallel, rather than one by one
        cas.prefetch(schedule.files[a.path].digest for a in artifacts if not a.is_source
                           and not up_to_date(workspace.output_dir, a.path, schedule.files[a.path], stats))
    sweep_interrupted(workspace.output_dir)
    try:
        with placing(workspace.output_dir, placement) as place:
            outputs = tuple(_publish(place, cas, stats, schedule, a) for a in artifacts)
    except MkError as e:
        raise BuildAborted(e.message, _summary(graph, schedule.outcomes, started)) from None
    return schedule, outputs


def _readers(actions: Sequence[Action]) -> dict[str, list[Action]]:
    """The actions reading each path, for finding what an edit reaches."""
    readers: dict[str, list[Action]] = {}
    for action in actions:
        for artifact in action.inputs:
            readers.setdefault(artifact.path, []).append(action)
    return readers


def _unchanged(
    actions: Sequence[Action], readers: Mapping[str, list[Action]], sources_then: Mapping[str, FileDigest],
    sources: Mapping[str, FileDigest], then: ScheduleResult,
) -> tuple[list[Action], list[Outcome]]:
    """The actions that must be considered again, after the sources that differ from the last
    build of the same graph: those reading them, and those reading what those make, and so on.
    And the outcomes the others keep, as a no-op build would report them: cached."""
    changed = {path for path, digest in sources.items() if sources_then.get(path) != digest}
    changed.update(sources_then.keys() - sources.keys())
    dirty: set[int] = set()
    pending = [a for path in changed for a in readers.get(path, ())]
    while pending:
        action = pending.pop()
        if id(action) not in dirty:
            dirty.add(id(action))
            pending.extend(a for out in action.outputs for a in readers.get(out.path, ()))
    # Most outcomes were kept last time too, as they are: those are reused rather than made again.
    kept = [o if o.status == "cached" and o.origin == "local" and o.seconds == 0.0
            else Outcome(o.action, o.material, o.result, "cached", "local", 0.0)
            for o in then.outcomes if id(o.action) not in dirty]
    return [a for a in actions if id(a) in dirty], kept


def _record_explain(cache: LocalCache, workspace: Workspace, considered: Sequence[tuple[Action, KeyMaterial]],
                    outcomes: Sequence[Outcome], failures: Sequence[tuple[Action, BaseException]]) -> None:
    """Remember the key material of what this build considered, for `mk explain`.

    A build that ran nothing records nothing: a no-op build must stay cheap, so `mk explain`
    speaks of the last build that ran something."""
    executed = [o.action for o in outcomes if o.status == "executed"] + [a for a, _ in failures]
    if not executed:
        return
    ExplainLog(cache.root, workspace.root).record(considered, executed)


def _publish(
    place: Callable[[str, FileDigest, ContentStore, StatCache], None], cas: ContentStore, stats: StatCache,
    schedule: ScheduleResult, artifact: Artifact,
) -> str:
    """Where the requested file can be found, relative to the workspace root."""
    if artifact.is_source:
        return artifact.path
    place(artifact.path, schedule.files[artifact.path], cas, stats)
    return f"{OUTPUT_DIR}/{artifact.path}"


def _hash_sources(workspace: Workspace, stats: StatCache, graph: Graph) -> dict[str, FileDigest]:
    sources: dict[str, FileDigest] = {}
    for source in graph.sources:
        try:
            sources[source.path] = stats.digest(f"{workspace.root}/{source.path}")
        except IsADirectoryError:
            raise MkError(f"source file '{source.path}' of {source.owner} is a directory; name the files in it "
                          "(glob() lists them)", source.location) from None
        except (FileNotFoundError, NotADirectoryError):
            raise MkError(f"source file '{source.path}' of {source.owner} does not exist", source.location) from None
    return sources


def _host_identity(stats: StatCache, package_database: str) -> str:
    """What stands for the host's tools in the key of a command run on them: the digest of the
    package database, which changes whenever a package is installed, upgraded or removed."""
    try:
        return stats.digest(Path(package_database).resolve()).digest
    except OSError as e:
        raise MkError(f"toolchain = \"host\" needs the host's package database {package_database} to key "
                      f"commands by the host's tools, and it cannot be read ({e.strerror or e}); set "
                      "host_package_database in mk.toml, or declare a toolchain") from None
