"""`mk query deps|rdeps|graph`: questions about the target graph, as text, Graphviz dot or SVG."""

from __future__ import annotations

import shutil
import subprocess

from mk.engine.analysis import Analyzer
from mk.engine.errors import MkError
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


def to_edges(edges: Edges, nodes: list[Label]) -> str:
    """One `target -> dep` line per edge between `nodes`; a node with no edge stands alone."""
    keep = set(nodes)
    lines = []
    for source in nodes:
        targets = sorted(t for t in edges.get(source, ()) if t in keep)
        lines += [f"{source} -> {target}" for target in targets] or [str(source)]
    return "".join(f"{line}\n" for line in lines)


def to_svg(dot: str) -> bytes:
    """Render `dot` with graphviz."""
    program = shutil.which("dot")
    if program is None:
        raise MkError("--output svg needs graphviz's `dot`; on Debian: apt-get install graphviz")
    proc = subprocess.run([program, "-Tsvg"], input=dot.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise MkError(f"dot -Tsvg failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
