"""`mk query deps|rdeps`: questions about the target graph, as text or Graphviz dot."""

from __future__ import annotations

from mk.engine.analysis import Analyzer
from mk.engine.labels import Label
from mk.engine.loader import Loader

Edges = dict[Label, tuple[Label, ...]]


def dependency_edges(loader: Loader, analyzer: Analyzer, roots: list[Label]) -> Edges:
    for label in roots:
        analyzer.analyze(label)
    return {c.target.label: c.deps for c in analyzer.closure()}


def deps(edges: Edges, root: Label) -> list[Label]:
    seen: set[Label] = set()
    stack = [root]
    while stack:
        label = stack.pop()
        if label not in seen:
            seen.add(label)
            stack.extend(edges.get(label, ()))
    return sorted(seen)


def rdeps(edges: Edges, root: Label) -> list[Label]:
    reverse: dict[Label, list[Label]] = {}
    for source, targets in edges.items():
        for target in targets:
            reverse.setdefault(target, []).append(source)
    return deps({k: tuple(v) for k, v in reverse.items()}, root)


def to_dot(edges: Edges, nodes: list[Label]) -> str:
    keep = set(nodes)
    lines = ["digraph mk {", "  rankdir=LR;", "  node [shape=box];"]
    for label in nodes:
        lines.append(f'  "{label}";')
    for source in nodes:
        for target in edges.get(source, ()):
            if target in keep:
                lines.append(f'  "{source}" -> "{target}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
