"""`mk query deps|rdeps|graph`: questions about the target graph, asked of targets, target patterns
and source files, answered as labels, JSON, Graphviz dot or SVG."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mk.engine.analysis import Analyzer
from mk.engine.errors import MkError, did_you_mean
from mk.engine.labels import Label, LabelError, Pattern
from mk.engine.loader import Loader
from mk.engine.platforms import Platform
from mk.engine.targets import ConfiguredTarget

Edges = dict[Label, tuple[Label, ...]]
# The version of `--output json`; it changes only when a field changes meaning or goes away.
JSON_VERSION = 1


@dataclass(frozen=True)
class Roots:
    """What a query's arguments name: targets (from labels and patterns) and source files."""

    targets: tuple[Label, ...]
    files: tuple[str, ...]  # relative to the workspace root


@dataclass(frozen=True)
class Answer:
    kind: str  # deps, rdeps or graph
    roots: Roots
    nodes: tuple[Label, ...]  # sorted
    closure: dict[Label, ConfiguredTarget]  # every target analysed, nodes included

    def edges(self) -> Edges:
        return {label: configured.deps for label, configured in self.closure.items()}

    def unused_files(self) -> list[str]:
        """The root files no target uses."""
        used = {f for configured in self.closure.values() for f in configured.source_files()}
        return [f for f in self.roots.files if f not in used]


def ask(loader: Loader, analyzer: Analyzer, kind: str, texts: Sequence[str],
        platform: Platform | None = None) -> Answer:
    """The answer for the targets as a build for `platform` (the host's by default) has them: which
    lockfile a package set reads, say, follows the platform."""
    roots = resolve(loader, texts)
    if roots.files and kind != "rdeps":
        file = roots.files[0]
        raise MkError(f"'{file}' is a source file, which depends on nothing; `mk query rdeps {file}` lists the "
                      "targets that use it")
    universe = loader.expand("//...") if kind == "rdeps" else list(roots.targets)
    edges = dependency_edges(loader, analyzer, universe, platform)
    closure = {c.target.label: c for c in analyzer.closure()}
    if kind == "rdeps":
        users = [label for label, c in closure.items() if set(c.source_files()) & set(roots.files)]
        nodes = rdeps(edges, [*roots.targets, *users])
    else:
        nodes = deps(edges, roots.targets)
    return Answer(kind, roots, tuple(nodes), closure)


def resolve(loader: Loader, texts: Iterable[str]) -> Roots:
    """Each text is a label or pattern (`//pkg:name`, `//pkg:all`, `//pkg/...`), or a source file:
    as a label (`//web:index.html`) or as a path from the workspace root (`web/index.html`)."""
    targets: dict[Label, None] = {}
    files: dict[str, None] = {}
    for text in texts:
        file = _source_file(loader, text)
        if file is not None:
            files[file] = None
        else:
            targets.update(dict.fromkeys(_targets(loader, text)))
    return Roots(tuple(targets), tuple(files))


def _is_path(text: str) -> bool:
    return not text.startswith("//") and ":" not in text


def _source_file(loader: Loader, text: str) -> str | None:
    """The workspace-relative path of the source file `text` names, if it names one (and no target)."""
    if _is_path(text):
        path = os.path.normpath(text)
        inside = not (os.path.isabs(path) or path == ".." or path.startswith("../"))
        return path if inside and loader.observed.is_file(loader.root / path) else None
    try:
        label = Label.parse(text)
    except LabelError:
        return None
    if not loader.has_package(label.package) or label.name in loader.package(label.package).targets:
        return None
    path = f"{label.package}/{label.name}".lstrip("/")
    return path if loader.observed.is_file(loader.root / path) else None


def _targets(loader: Loader, text: str) -> list[Label]:
    """The targets a label or pattern names; errors also suggest files, which a query takes too."""
    try:
        pattern: Pattern | None = Pattern.parse(text)
    except LabelError:
        pattern = None
    known = pattern is not None and (pattern.recursive or loader.has_package(pattern.package))
    if not known and _is_path(text):
        folder = os.path.dirname(os.path.normpath(text))
        siblings = [os.path.join(folder, name) for name in _files_in(loader, folder)]
        raise MkError(f"'{text}' is neither a target nor a file of the workspace{did_you_mean(text, siblings)}")
    if known and pattern is not None and pattern.name is not None \
            and pattern.name not in loader.package(pattern.package).targets:
        raise MkError(loader.missing_target_message(Label(pattern.package, pattern.name), with_files=True))
    return loader.expand(text)  # or its error: a malformed label, a package that does not exist


def _files_in(loader: Loader, folder: str) -> list[str]:
    base = Path(os.path.normpath(loader.root / folder))
    if not base.is_relative_to(loader.root) or not base.is_dir():
        return []
    return sorted(entry.name for entry in base.iterdir() if entry.is_file())


def dependency_edges(loader: Loader, analyzer: Analyzer, roots: Iterable[Label],
                     platform: Platform | None = None) -> Edges:
    for label in roots:
        analyzer.analyze(label, platform)
    return {c.target.label: c.deps for c in analyzer.closure()}


def deps(edges: Edges, roots: Iterable[Label]) -> list[Label]:
    """`roots` and everything they depend on, directly or not."""
    seen: set[Label] = set()
    stack = list(roots)
    while stack:
        label = stack.pop()
        if label not in seen:
            seen.add(label)
            stack.extend(edges.get(label, ()))
    return sorted(seen)


def rdeps(edges: Edges, roots: Iterable[Label]) -> list[Label]:
    """`roots` and everything that depends on them, directly or not."""
    reverse: dict[Label, list[Label]] = {}
    for source, targets in edges.items():
        for target in targets:
            reverse.setdefault(target, []).append(source)
    return deps({k: tuple(v) for k, v in reverse.items()}, roots)


def to_labels(answer: Answer) -> str:
    if answer.kind == "graph":
        return to_edges(answer.edges(), answer.nodes)
    return "".join(f"{n}\n" for n in answer.nodes)


def to_json(answer: Answer) -> str:
    """The documented shape (README.md, "What `mk query` accepts"): the roots as resolved, then each
    target with its rule, the listed targets it depends on directly, and the source files it uses."""
    keep = set(answer.nodes)
    targets = [{
        "label": str(label),
        "rule": answer.closure[label].target.rule.name,
        "deps": [str(d) for d in answer.closure[label].deps if d in keep],
        "files": answer.closure[label].source_files(),
    } for label in answer.nodes]
    document = {
        "version": JSON_VERSION,
        "query": answer.kind,
        "roots": {"targets": [str(t) for t in answer.roots.targets], "files": list(answer.roots.files)},
        "targets": targets,
    }
    return json.dumps(document, indent=2) + "\n"


def to_dot(edges: Edges, nodes: Sequence[Label]) -> str:
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


def to_edges(edges: Edges, nodes: Sequence[Label]) -> str:
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
