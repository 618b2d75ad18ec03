"""`mk build`: load, analyse, hash sources, schedule, place outputs, summarise."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mk.cache.cas import CorruptBlobError, MissingBlobError
from mk.cache.local import LocalCache
from mk.cache.stat_cache import FileDigest, StatCache
from mk.engine.actions import Action, Artifact
from mk.engine.errors import MkError
from mk.engine.execute import Executor
from mk.engine.graph_cache import GraphCache
from mk.engine.labels import Label
from mk.engine.outputs import place
from mk.engine.rebuilder import Rebuilder
from mk.engine.report import Reporter, Summary
from mk.engine.scheduler import ScheduleResult, run_actions
from mk.engine.targets import ConfiguredTarget
from mk.engine.workspace import Workspace

# A corrupt blob found mid-build is deleted; the next attempt rebuilds whatever needed it.
_ATTEMPTS = 3


@dataclass(frozen=True)
class BuildOptions:
    jobs: int = os.cpu_count() or 1
    keep_going: bool = False
    force: bool = False
    events: TextIO | None = None


@dataclass(frozen=True)
class BuildResult:
    summary: Summary
    outputs: tuple[Path, ...]
    schedule: ScheduleResult


@dataclass(frozen=True)
class Graph:
    """The analysed closure of the requested targets."""

    requested: tuple[ConfiguredTarget, ...]
    targets: tuple[ConfiguredTarget, ...]
    actions: tuple[Action, ...]


def analyse(workspace: Workspace, cache: LocalCache, patterns: Sequence[str]) -> Graph:
    """The analysed graph, reused from the last build when no BUILD, .bzl or source moved."""
    graph_cache = GraphCache(cache.root, workspace.root, list(patterns))
    cached = graph_cache.load(Graph)
    if cached is not None:
        return cached
    from mk.engine.analysis import Analyzer  # Starlark is needed only when the graph changed
    from mk.engine.loader import Loader

    loader = Loader(workspace)
    analyzer = Analyzer(loader, workspace.settings.source_date_epoch)
    labels: dict[Label, None] = {}
    for pattern in patterns:
        labels.update(dict.fromkeys(loader.expand(pattern)))
    requested = tuple(analyzer.analyze(label) for label in labels)
    targets = tuple(analyzer.closure())
    actions = tuple(a for t in targets for a in t.actions)
    producers: dict[str, Action] = {}
    for action in actions:
        for out in action.outputs:
            if out.path in producers:
                raise MkError(
                    f"'{out.path}' is an output of both {producers[out.path].owner} and {action.owner}"
                )
            producers[out.path] = action
    graph = Graph(requested, targets, actions)
    graph_cache.save(graph, loader.observed)
    return graph


def build(
    workspace: Workspace, cache: LocalCache, patterns: Sequence[str], options: BuildOptions
) -> BuildResult:
    started = time.perf_counter()
    graph = analyse(workspace, cache, patterns)
    cache.sweep_stale_scratch()
    stats = cache.stat_cache(workspace.root)
    with cache.lock():
        try:
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    schedule, outputs = _attempt(workspace, cache, stats, graph, options)
                    break
                except (CorruptBlobError, MissingBlobError) as e:
                    if attempt == _ATTEMPTS:
                        raise MkError(f"the local cache keeps losing blobs: {e}") from None
                    print(f"mk: warning: {e}; rebuilding what needed it", file=sys.stderr)
        finally:
            stats.save()
    summary = Summary(
        targets=len(graph.targets),
        actions=len(graph.actions),
        executed=sum(o.status == "executed" for o in schedule.outcomes),
        cached_local=sum(o.status == "cached" and o.origin == "local" for o in schedule.outcomes),
        cached_remote=sum(o.status == "cached" and o.origin == "remote" for o in schedule.outcomes),
        seconds=time.perf_counter() - started,
    )
    return BuildResult(summary, outputs, schedule)


def _attempt(
    workspace: Workspace, cache: LocalCache, stats: StatCache, graph: Graph, options: BuildOptions
) -> tuple[ScheduleResult, tuple[Path, ...]]:
    sources = _hash_sources(workspace, stats, graph)
    tools = sorted({t for a in graph.actions for t in a.host_tools})
    tool_digests = {t: _tool_digest(stats, t) for t in tools}
    executor = Executor(cache, workspace.root)
    rebuilder = Rebuilder(cache, executor, tool_digests, force=options.force)
    reporter = Reporter(len(graph.actions), options.events)
    schedule = run_actions(
        graph.actions, sources, rebuilder, options.jobs, options.keep_going,
        reporter.finished, reporter.started,
    )
    corrupt = [e for _, e in schedule.failures if isinstance(e, CorruptBlobError | MissingBlobError)]
    if corrupt:
        raise corrupt[0]
    artifacts = dict.fromkeys(a for t in graph.requested for a in t.info.files)
    if schedule.failures:  # --keep-going: still place what was built, as Bazel does
        artifacts = dict.fromkeys(a for a in artifacts if a.path in schedule.files)
    outputs = tuple(_publish(workspace, cache, stats, schedule, a) for a in artifacts)
    return schedule, outputs


def _publish(
    workspace: Workspace, cache: LocalCache, stats: StatCache, schedule: ScheduleResult, artifact: Artifact
) -> Path:
    if artifact.is_source:
        return workspace.root / artifact.path
    return place(workspace.output_dir, artifact.path, schedule.files[artifact.path], cache.cas, stats)


def _hash_sources(workspace: Workspace, stats: StatCache, graph: Graph) -> dict[str, FileDigest]:
    sources: dict[str, FileDigest] = {}
    for configured in graph.targets:
        files = [i for a in configured.actions for i in a.inputs] + list(configured.info.files)
        for artifact in files:
            if artifact.is_source and artifact.path not in sources:
                try:
                    sources[artifact.path] = stats.digest(workspace.root / artifact.path)
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    raise MkError(
                        f"source file '{artifact.path}' of {configured.target.label} does not exist "
                        "or is not a regular file",
                        configured.target.location,
                    ) from None
    return sources


def _tool_digest(stats: StatCache, tool: str) -> str:
    try:
        return stats.digest(Path(tool).resolve()).digest
    except FileNotFoundError:
        raise MkError(f"host tool {tool} is not installed") from None
