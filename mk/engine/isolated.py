"""Loading and analysis in a child process, bounded in memory and time.

BUILD files are programs. starlark-rust evaluates them with no memory bound (`list(range(10**8))`
takes 12 GB) and recursively (a deep enough expression overflows its stack and kills the
process with no message). So `mk build` evaluates them in a child process with an address-space
limit and an alarm: a BUILD file that goes past either, or crashes the evaluator, becomes an
error that says which limit and what to change, and the build process is never at risk.

The parent sends the request (pickled) on the child's stdin; the child writes its answer (the
analysed graph, or the error) to a file the parent names, so nothing a BUILD file prints can
corrupt it.
"""

from __future__ import annotations

import pickle
import resource
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mk.engine.errors import MkError
from mk.engine.platforms import Platform

if TYPE_CHECKING:
    from mk.engine.graph import Graph
    from mk.engine.graph_cache import GraphCache
    from mk.engine.registry import Registry
    from mk.engine.workspace import Workspace


@dataclass(frozen=True)
class Request:
    workspace: Workspace
    registry: Registry
    cache_root: Path
    patterns: tuple[str, ...]
    groups: tuple[str, ...]
    platforms: tuple[Platform, ...]
    answer: Path  # where the child writes its answer
    memory_mib: int
    seconds: int


def analyse_in_child(
    workspace: Workspace, registry: Registry, graph_cache: GraphCache, patterns: Sequence[str],
    groups: Sequence[str], scratch: Path, platforms: tuple[Platform, ...] = (),
) -> Graph:
    settings = workspace.settings
    answer = scratch / "analysis"
    request = Request(workspace, registry, graph_cache.cache_root, tuple(patterns), tuple(groups), platforms, answer,
                      settings.load_memory_mib, settings.load_seconds)
    proc = subprocess.run([sys.executable, "-m", "mk.engine.isolated"], input=pickle.dumps(request),
                          stderr=subprocess.PIPE, check=False)
    try:
        kind, value = pickle.loads(answer.read_bytes())
    except (OSError, EOFError, pickle.UnpicklingError):
        # What a crashed evaluator printed (a Rust panic, say) would only hide the reason given here.
        raise MkError(_crash(proc.returncode, request, proc.stderr.decode("utf-8", "replace"))) from None
    sys.stderr.write(proc.stderr.decode("utf-8", "replace"))  # what BUILD files printed
    if kind == "error":
        message, location = value
        raise MkError(message, location)
    graph: Graph = value
    return graph


def _crash(code: int, request: Request, stderr: str) -> str:
    if code == -signal.SIGXCPU:
        what = f"evaluating BUILD files took more than {request.seconds} s (load_seconds in mk.toml)"
    elif code == -signal.SIGKILL:
        what = (f"the process evaluating BUILD files was killed: it ran past load_seconds ({request.seconds} s), "
                "or the system ran out of memory")
    elif code == -signal.SIGSEGV:
        what = ("the Starlark evaluator crashed (its stack overflowed): a BUILD or .bzl file recurses or nests "
                "too deeply")
    elif code == -signal.SIGABRT or code == _OUT_OF_MEMORY:
        what = (f"evaluating BUILD files needed more than {request.memory_mib} MiB of memory "
                "(load_memory_mib in mk.toml)")
    else:
        what = f"the process evaluating BUILD files ended with {'signal ' + str(-code) if code < 0 else code}"
        if "Traceback" in stderr:  # a bug in mk: the traceback is what a report needs
            what += " (an internal error in mk; please report it with this traceback):\n" + stderr.rstrip()
    return f"loading failed: {what}"


_OUT_OF_MEMORY = 3  # the child's exit status when Python itself could not allocate
_CPU_GRACE = 10  # seconds of CPU past the loader's deadline before the process is ended


def _main() -> None:
    request: Request = pickle.loads(sys.stdin.buffer.read())
    limit = request.memory_mib << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # The loader stops evaluation at its deadline; CPU time past it (a long native call, say)
    # ends the process, which the parent reports.
    cpu = request.seconds + _CPU_GRACE
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))  # SIGXCPU first, SIGKILL 5 s later
    from mk.engine.graph import analyse_here, graph_key
    from mk.engine.graph_cache import GraphCache

    graph_cache = GraphCache(request.cache_root, request.workspace.root,
                             graph_key(request.patterns, request.groups, request.platforms))
    try:
        answer: tuple[str, object] = ("graph", analyse_here(request.workspace, request.registry, graph_cache,
                                                            request.patterns, request.groups, request.seconds,
                                                            request.platforms))
    except MkError as e:
        answer = ("error", (e.message, e.location))
    except MemoryError:
        sys.exit(_OUT_OF_MEMORY)
    request.answer.write_bytes(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _main()
