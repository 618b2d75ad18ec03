"""Action keys: everything that can change an action's output, gathered once into `KeyMaterial`.

The rebuilder hashes that one object into the action key, and `mk explain` stores and compares
the very same object, so explain can never disagree with what decided a rebuild.

What goes in:
- the key schema (how keys are made and actions executed);
- the mnemonic, and for an in-process action its *implementation*: the function's qualified
  name plus a digest of the source of every mk module it can run (its module and, transitively,
  each mk module that one imports). Editing any of that code changes the key; nothing is
  bumped by hand;
- a digest of each parameter, of the command line, the output paths and the platform;
- at build time: the content digest of each input (never the key of the action that made it,
  so a rebuilt input with the same bytes leaves this key alone: early cutoff). A command's
  toolchain tree is one of its inputs; a command run on the host's tools has instead the digest
  of the host's package database.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import blake3
import msgpack

from mk.engine.labels import Label

# Bump when what goes into a key, or how actions are executed, changes meaning.
KEY_SCHEMA = 3


def canonical(value: object) -> object:
    """A form of `value` whose msgpack encoding does not depend on dict insertion order."""
    if isinstance(value, Mapping):
        return [[str(k), canonical(value[k])] for k in sorted(value, key=str)]
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, Label):
        return str(value)
    return value


def value_digest(value: object) -> str:
    return blake3.blake3(msgpack.packb(canonical(value))).hexdigest()


def platform_id() -> str:
    return f"linux-{platform.machine()}"


@dataclass(frozen=True)
class Implementation:
    """The code an in-process action runs: `module.qualname`, and the digest of its mk sources."""

    name: str
    digest: str


def implementation_of(function: Callable[..., object]) -> Implementation:
    return Implementation(f"{function.__module__}.{function.__qualname__}", module_closure_digest(function.__module__))


@functools.cache
def module_closure_digest(module: str) -> str:
    """blake3 over the sources of `module` and every mk module it imports, directly or not.

    Imports are read from the source (any `import mk.x` or `from mk.x import y`, wherever it
    stands, lazy imports included), so the digest covers code that only runs when an action does.
    """
    hasher = blake3.blake3()
    for name in sorted(_mk_import_closure(module)):
        hasher.update(f"{name}\0".encode())
        hasher.update(_source(name))
        hasher.update(b"\0")
    return hasher.hexdigest()


def _mk_import_closure(module: str) -> set[str]:
    seen: set[str] = set()
    stack = [module]
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(_mk_imports(name))
    return seen


@functools.cache
def _mk_imports(module: str) -> tuple[str, ...]:
    import ast  # at analysis only: a build that reuses its graph never reads a source

    found: set[str] = set()
    for node in ast.walk(ast.parse(_source(module))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from mk.rules import init` names a module; `from mk.rules.init import X` a symbol.
            candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(c for c in candidates if c.split(".")[0] == "mk" and _origin(c) is not None)
    return tuple(sorted(found))


@functools.cache
def _origin(module: str) -> str | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin and spec.origin.endswith(".py") else None


@functools.cache
def _source(module: str) -> bytes:
    origin = _origin(module)
    assert origin is not None, module
    with open(origin, "rb") as f:
        return f.read()


@dataclass(frozen=True)
class StaticMaterial:
    """The part of the key fixed at analysis time; computed once and kept with the cached graph."""

    schema: int
    mnemonic: str
    implementation: Implementation | None  # None for a command
    params: tuple[tuple[str, str], ...]  # name -> digest of the value
    command: str | None  # digest of the argv
    outputs: tuple[str, ...]
    platform: str

    @functools.cached_property
    def digest(self) -> bytes:
        implementation = [self.implementation.name, self.implementation.digest] if self.implementation else None
        material = [self.schema, self.mnemonic, implementation, [list(p) for p in self.params], self.command,
                    list(self.outputs), self.platform]
        return blake3.blake3(msgpack.packb(material)).digest()


def static_material(
    mnemonic: str, function: Callable[..., object] | None, params: Mapping[str, object],
    command: tuple[str, ...] | None, outputs: tuple[str, ...],
) -> StaticMaterial:
    return StaticMaterial(
        schema=KEY_SCHEMA,
        mnemonic=mnemonic,
        implementation=implementation_of(function) if function is not None else None,
        params=tuple((str(k), value_digest(params[k])) for k in sorted(params, key=str)),
        command=value_digest(list(command)) if command is not None else None,
        outputs=tuple(sorted(outputs)),
        platform=platform_id(),
    )


@dataclass(frozen=True)
class KeyMaterial:
    """Everything an action's key is made of. `key` hashes exactly this; explain compares it."""

    static: StaticMaterial
    inputs: tuple[tuple[str, str], ...]  # path -> "content digest:executable bit", sorted by path
    tools: tuple[tuple[str, str], ...]  # for a command on the host's tools: their identity (see build)

    @functools.cached_property
    def key(self) -> str:
        material = [self.static.digest, [list(i) for i in self.inputs], [list(t) for t in self.tools]]
        return blake3.blake3(msgpack.packb(material)).hexdigest()

    def record(self) -> dict[str, object]:
        """A plain form for the explain log (msgpack), compared part by part."""
        s = self.static
        return {
            "schema": s.schema,
            "implementation": [s.implementation.name, s.implementation.digest] if s.implementation else None,
            "params": dict(s.params),
            "command": s.command,
            "outputs": list(s.outputs),
            "platform": s.platform,
            "inputs": dict(self.inputs),
            "tools": dict(self.tools),
        }
