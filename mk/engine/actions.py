"""Actions: units of work with declared inputs and outputs (their keys are made in `keys`)."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mk.cache.cas import ContentStore
from mk.engine.errors import Location
from mk.engine.keys import StaticMaterial, static_material
from mk.engine.labels import Label

if TYPE_CHECKING:
    from mk.cache.tree import Tree

Params = Mapping[str, object]


@dataclass(frozen=True, order=True)
class Artifact:
    """A file, named by its path relative to the workspace root (sources and outputs alike).

    A tree artifact holds a tree manifest (see `mk.cache.tree`): its result then records that it
    references the blobs of its files, which cache maintenance, verification and uploads follow."""

    path: str
    is_source: bool
    is_tree: bool = False


@dataclass(frozen=True)
class ActionIO:
    """What an in-process action sees: its input files (already materialised), its output paths,
    a scratch folder, the content store (for actions that produce or read trees), and `source_url`,
    which gives the base URL of a named download source (the "debian" archive, say). That is
    looked up at run time on purpose: where a file is downloaded from never enters a key."""

    inputs: Mapping[str, Path]
    outputs: Mapping[str, Path]
    params: Params
    cas: ContentStore
    scratch: Path
    source_url: Callable[[str], str]

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

    def read_tree(self, path: str) -> Tree:
        from mk.cache.tree import Tree  # when an action runs: a no-op build reads no tree

        return Tree.decode(self.inputs[path].read_bytes())

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
    # Where its owner is declared, for its errors; set by analysis, never part of the key.
    where: Location | None = field(default=None, compare=False)

    @property
    def runs_on_host_tools(self) -> bool:
        """A command without a toolchain: not hermetic, so kept out of shared caches by default."""
        return self.command is not None and self.toolchain is None

    def describe(self) -> str:
        return f"{self.mnemonic} {self.owner}"

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
