"""Actions: units of work with declared inputs and outputs, and their content-derived keys."""

from __future__ import annotations

import functools
import importlib
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import msgpack

from mk.cache.cas import ContentStore
from mk.engine.labels import Label

# Bump when the meaning of a key changes (what goes into it, or how actions are executed).
KEY_SCHEMA = 1

Params = Mapping[str, object]


@dataclass(frozen=True, order=True)
class Artifact:
    """A file, named by its path relative to the workspace root (sources and outputs alike)."""

    path: str
    is_source: bool


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


@dataclass(frozen=True)
class Action:
    """Declared by a rule during analysis. Exactly one of `command` and `function` is set.

    `command` is an argv run in a scratch directory holding only the declared inputs;
    `function` runs in-process. `version` names the implementation: change it whenever the
    code behind `function` (or the way a rule builds `command`) changes meaning.
    """

    owner: Label
    mnemonic: str
    version: int
    inputs: tuple[Artifact, ...]
    outputs: tuple[Artifact, ...]
    params: Params = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    function: Callable[[ActionIO], None] | None = field(default=None, compare=False)
    host_tools: tuple[str, ...] = ()  # absolute paths of host binaries the command relies on

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
    def static_key(self) -> bytes:
        """The part of the key fixed at analysis time; computed once and kept with the graph."""
        material = [
            KEY_SCHEMA,
            self.mnemonic,
            self.version,
            canonical(self.params),
            list(self.command) if self.command is not None else None,
            sorted(a.path for a in self.outputs),
            platform_id(),
        ]
        return blake3.blake3(msgpack.packb(material)).digest()

    @functools.cached_property
    def sorted_inputs(self) -> tuple[str, ...]:
        return tuple(sorted(a.path for a in self.inputs))


class LazyFunction:
    """A module-level function named by module and name, imported when first called."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, io: ActionIO) -> None:
        function: Callable[[ActionIO], None] = getattr(importlib.import_module(self.module), self.name)
        function(io)

    def __reduce__(self) -> tuple[type[LazyFunction], tuple[str, str]]:
        return (LazyFunction, (self.module, self.name))


def _restore_action(state: dict[str, object]) -> Action:
    action = object.__new__(Action)
    action.__dict__.update(state)
    return action


def canonical(value: object) -> object:
    """A form of `value` whose msgpack encoding does not depend on dict insertion order."""
    if isinstance(value, Mapping):
        return [[str(k), canonical(value[k])] for k in sorted(value, key=str)]
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, Label):
        return str(value)
    return value


def platform_id() -> str:
    return f"linux-{platform.machine()}"


def action_key(
    action: Action, input_digests: Mapping[str, str], tool_digests: Mapping[str, str]
) -> str:
    """blake3 over canonical msgpack of everything that can change an action's output.

    Inputs enter by *content* digest, never by the key of the action that made them, so a
    rebuilt input with unchanged bytes leaves this key unchanged (early cutoff).
    """
    material = [
        action.static_key,
        [[path, input_digests[path]] for path in action.sorted_inputs],
        sorted(tool_digests.items()),
    ]
    return blake3.blake3(msgpack.packb(material)).hexdigest()
