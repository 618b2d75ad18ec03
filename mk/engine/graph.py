"""The analysed graph: what a build needs of the targets' closure, made by loading and analysis.

Kept small, since a no-op build unpickles it from the analysis cache (see `graph_cache`).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mk.engine.actions import Action, Artifact
from mk.engine.errors import Location, MkError
from mk.engine.graph_cache import GraphCache
from mk.engine.labels import Label
from mk.engine.placed import Placement
from mk.engine.platforms import Platform, graph_key_parts, host_platform
from mk.engine.registry import Registry
from mk.engine.workspace import Workspace

if TYPE_CHECKING:
    from mk.engine.targets import ConfiguredTarget


@dataclass(frozen=True)
class SourceFile:
    path: str
    owner: str  # the first target that uses it, for error messages
    location: Location


@dataclass(frozen=True)
class Graph:
    """What a build needs of the analysed closure; small, as it is unpickled on every build."""

    target_count: int
    requested_files: tuple[Artifact, ...]
    placement: Placement  # the files placed in mk-out for each requested target
    actions: tuple[Action, ...]
    sources: tuple[SourceFile, ...]
    # The providers of each requested target, by label, pickled apart: they are read only by
    # `mk run` and `mk watch --run`, so a no-op build does not import the modules that define them.
    requested_providers: bytes
    host_tool_commands: int  # commands on the host's tools: the build keys them by its package database
    platforms: tuple[str, ...] = ()  # the target platforms it was analysed for, unless the host's alone


def graph_key(patterns: Sequence[str], groups: Sequence[str], platforms: tuple[Platform, ...]) -> list[str]:
    """What names an analysed graph in the analysis cache: what was asked, for which platforms."""
    return [*patterns, *(f"group:{g}" for g in groups), *graph_key_parts(platforms or (host_platform(),))]


def analyse_here(
    workspace: Workspace, registry: Registry, graph_cache: GraphCache, patterns: Sequence[str],
    groups: Sequence[str] = (), seconds: float | None = None, platforms: tuple[Platform, ...] = (),
) -> Graph:
    """Load and analyse in this process, and save the graph. Only the actions that the requested
    files need are kept (an image's `tar` format is not built unless its output group is asked for)."""
    from mk.engine.analysis import Analyzer  # Starlark is needed only when the graph changed
    from mk.engine.loader import Loader

    loader = Loader(workspace, registry.rules, seconds)
    labels: dict[Label, None] = {}
    for pattern in patterns:
        labels.update(dict.fromkeys(loader.expand(pattern)))
    analyzer = Analyzer(loader, workspace.settings.source_date_epoch, dict.fromkeys(labels, tuple(groups)))
    requested = {requested_name(label, p): analyzer.analyze(label, p)
                 for p in platforms or (host_platform(),) for label in labels}
    targets = analyzer.closure()
    producers: dict[str, Action] = {}
    unique: list[Action] = []
    for action in (a for t in targets for a in t.actions):
        if action.outputs and producers.get(action.outputs[0].path) == action:
            continue  # a shared action that a target configured for another platform declared too
        unique.append(action)
        for out in action.outputs:
            if out.path in producers:
                raise MkError(
                    f"'{out.path}' is an output of both {producers[out.path].owner} and {action.owner}"
                )
            producers[out.path] = action
    actions = tuple(unique)
    files = {name: _files(t, groups) for name, t in requested.items()}
    requested_files = tuple(dict.fromkeys(f for fs in files.values() for f in fs))
    placement = Placement.of((label, tuple(dict.fromkeys(f.path for f in fs if not f.is_source)))
                             for label, fs in files.items())
    needed = _needed(requested_files, producers)
    actions = tuple(a for a in actions if id(a) in needed)
    for action in actions:  # computed now, so the cached graph carries them
        _ = action.static.digest, action.sorted_inputs
    graph = Graph(len(targets), requested_files, placement, actions, _source_files(targets, actions, requested_files),
                  pickle.dumps({name: t.providers for name, t in requested.items()}),
                  sum(a.runs_on_host_tools for a in actions),
                  () if not platforms or platforms == (host_platform(),) else tuple(map(str, platforms)))
    graph_cache.save(graph, loader.observed)
    return graph


def requested_name(label: Label, platform: Platform) -> str:
    """How a requested target is named in mk-out's record and among the providers: by its label, and
    its platform too when that is not the host's (both may be built, and placed, side by side)."""
    return str(label) if platform == host_platform() else f"{label} ({platform})"


def _files(configured: ConfiguredTarget, groups: Sequence[str]) -> list[Artifact]:
    default = configured.providers.default
    files = list(default.files)
    for group in groups:
        if group not in default.groups:
            known = ", ".join(sorted(default.groups)) or "none"
            raise MkError(f"{configured.target.label} has no output group '{group}' (it has: {known})",
                          configured.target.location)
        files += default.groups[group]
    return files


def _needed(files: Sequence[Artifact], producers: dict[str, Action]) -> set[int]:
    """ids of the actions that `files` depend on, directly or not."""
    needed: set[int] = set()
    stack = [producers[f.path] for f in files if not f.is_source]
    while stack:
        action = stack.pop()
        if id(action) not in needed:
            needed.add(id(action))
            stack.extend(producers[i.path] for i in action.inputs if not i.is_source)
    return needed


def _source_files(
    targets: Sequence[ConfiguredTarget], actions: Sequence[Action], requested: Sequence[Artifact]
) -> tuple[SourceFile, ...]:
    """The source files the kept actions read, or that were requested, with who uses them."""
    used = {i.path for a in actions for i in a.inputs if i.is_source} | {f.path for f in requested if f.is_source}
    sources: dict[str, SourceFile] = {}
    for configured in targets:
        for artifact in [i for a in configured.actions for i in a.inputs] + list(configured.providers.default.files):
            if artifact.is_source and artifact.path in used and artifact.path not in sources:
                target = configured.target
                sources[artifact.path] = SourceFile(artifact.path, str(target.label), target.location)
    return tuple(sources.values())
