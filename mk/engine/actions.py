"""Actions: units of work with declared inputs and outputs (their keys are made in `keys`)."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mk.cache.cas import ContentStore
from mk.cache.fixed_outputs import FixedOutputs
from mk.engine.errors import Location
from mk.engine.keys import StaticMaterial, static_material
from mk.engine.labels import Label

if TYPE_CHECKING:
    from mk.cache.tree import Tree

Params = Mapping[str, object]
# `Action.jobs` of a command that keeps as many cores busy as the build's -j gives it (make -j).
ALL_JOBS = 0


@dataclass(frozen=True, order=True)
class Artifact:
    """A file, named by its path relative to the workspace root (sources and outputs alike).

    A tree artifact holds a tree manifest (see `mk.cache.tree`): its result then records that it
    references the blobs of its files, which cache maintenance, verification and uploads follow."""

    path: str
    is_source: bool
    is_tree: bool = False


@dataclass(frozen=True)
class ActionWarning:
    """Something an in-process action found wrong without failing, and where it is, if known."""

    message: str
    location: Location | None = None

    def shown(self, action: Action) -> str:
        where = self.location or action.where
        return f"{where}: warning: {action.describe()}: {self.message}" if where else \
            f"mk: warning: {action.describe()}: {self.message}"


@dataclass(frozen=True)
class ActionIO:
    """What an in-process action sees: its input files (already materialised), its output paths,
    a scratch folder, the content store (for actions that produce or read trees), `fixed_outputs`
    (downloads pinned by sha256, found in the local store or the remote cache), and `source_urls`,
    which gives the base URLs of a named download source (the "debian" archive, say), in the
    order to try them. Those are looked up at run time on purpose: where a file is downloaded
    from never enters a key.

    `warn` reports something wrong that does not stop the action; the build prints it after the
    action has run (like a compiler's warning, not again while its result is cached) and keeps it
    in the action's log."""

    inputs: Mapping[str, Path]
    digests: Mapping[str, str]  # the blob digest of each input: what is known of its bytes without reading them
    outputs: Mapping[str, Path]
    params: Params
    cas: ContentStore
    work: Path  # where `scratch` is made, on first use: most functions need none, and a folder costs
    fixed_outputs: FixedOutputs
    source_urls: Callable[[str], tuple[str, ...]]
    warnings: list[ActionWarning] = field(default_factory=list)

    @property
    def scratch(self) -> Path:
        """A folder of the action's own, empty when it starts."""
        self.work.mkdir(exist_ok=True)
        return self.work

    def warn(self, message: str, location: Location | None = None) -> None:
        """`location`: where the problem is, if not in the action's own BUILD line (a line of an input)."""
        self.warnings.append(ActionWarning(message, location))

    def output(self, index: int = 0) -> Path:
        """The path of the action's `index`-th declared output."""
        return list(self.outputs.values())[index]

    def string(self, key: str) -> str:
        value = self.params[key]
        assert isinstance(value, str), key
        return value

    def strings(self, key: str) -> list[str]:
        value = self.params[key]
        assert isinstance(value, list | tuple), key
        return [str(v) for v in value]

    def integer(self, key: str) -> int:
        value = self.params[key]
        assert isinstance(value, int), key
        return value

    def read_bytes(self, path: str) -> bytes:
        """An input's bytes, from the store: they need not have been written out (`staged_inputs`)."""
        return self.cas.read_bytes(self.digests[path])

    def read_tree(self, path: str) -> Tree:
        from mk.cache.tree import Tree  # when an action runs: a no-op build reads no tree

        return Tree.decode_shared(self.read_bytes(path))

    def write_tree(self, tree: Tree, index: int = 0) -> None:
        self.output(index).write_bytes(tree.encode())


@dataclass(frozen=True)
class Action:
    """Declared by a rule during analysis. Exactly one of `command` and `function` is set.

    `command` is an argv run in the sandbox (see `sandbox`): its root is the `toolchain` tree
    (which is also one of the `inputs`, so the key holds its digest), or with no toolchain the
    host's /usr, whose identity then goes into the key. `function` runs in-process. The key
    covers the function's code (see `keys`), so text an action writes must come through
    `params`, never from a module constant read at run time.
    """

    owner: Label
    mnemonic: str
    inputs: tuple[Artifact, ...]
    outputs: tuple[Artifact, ...]
    params: Params = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    function: Callable[[ActionIO], None] | None = field(default=None, compare=False)
    toolchain: Artifact | None = None  # a command's root filesystem: a tree artifact among `inputs`
    local: bool = False  # never sent to a remote executor (where it runs is not part of its key)
    # How many of the build's -j slots a command keeps busy: 1, or ALL_JOBS (a parallel make). The
    # scheduler reserves them and the command reads how many it got in $MK_JOBS. Not in the key:
    # the outputs must not depend on it, so a result made with -j 2 serves a build with -j 16.
    jobs: int = 1
    # False for a function that learns all it needs of its inputs from the store (`io.digests`,
    # `io.cas`) and never opens their files: then they are not written out for it. Not in the key.
    staged_inputs: bool = True
    # Where its owner is declared, for its errors; set by analysis, never part of the key.
    where: Location | None = field(default=None, compare=False)
    # The target platform its owner was configured for ("linux/arm64"), if it was: set by analysis for
    # `mk explain`, never part of the key (what the platform changes reaches the key by itself).
    platform: str | None = field(default=None, compare=False)

    @property
    def runs_on_host_tools(self) -> bool:
        """A command without a toolchain: not hermetic, so kept out of shared caches by default."""
        return self.command is not None and self.toolchain is None

    def describe(self) -> str:
        return f"{self.mnemonic} {self.owner}"

    def slots(self, build_jobs: int) -> int:
        """The -j slots this action takes in a build run with `-j build_jobs`."""
        width = max(1, build_jobs)
        return width if self.jobs == ALL_JOBS else max(1, min(self.jobs, width))

    def __reduce__(self) -> tuple[Callable[[dict[str, object]], Action], tuple[dict[str, object]]]:
        # In the analysis cache the function is kept by name, so loading a cached graph imports
        # no rule module (and none of what rules import) until an action actually runs.
        state = dict(self.__dict__)  # the fields, and the cached key parts
        if self.function is not None and not isinstance(self.function, LazyFunction):
            state["function"] = LazyFunction(self.function.__module__, self.function.__qualname__)
        return (_restore_action, (state,))

    @functools.cached_property
    def static(self) -> StaticMaterial:
        """The part of the key fixed at analysis time; computed once and kept with the graph."""
        function = self.function
        if isinstance(function, LazyFunction):
            function = function.resolve()
        return static_material(self.mnemonic, function, self.params, self.command, tuple(a.path for a in self.outputs))

    @functools.cached_property
    def sorted_inputs(self) -> tuple[str, ...]:
        return tuple(sorted(a.path for a in self.inputs))


class LazyFunction:
    """A module-level function named by module and name, imported when first called."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def resolve(self) -> Callable[[ActionIO], None]:
        function: Callable[[ActionIO], None] = getattr(importlib.import_module(self.module), self.name)
        return function

    def __call__(self, io: ActionIO) -> None:
        self.resolve()(io)

    def __reduce__(self) -> tuple[type[LazyFunction], tuple[str, str]]:
        return (LazyFunction, (self.module, self.name))


def _restore_action(state: dict[str, object]) -> Action:
    action = object.__new__(Action)
    action.__dict__.update(state)
    return action
