"""What an mk command action is on the wire of the Remote Execution API, for client and worker alike.

The input root holds two folders:

- `execroot/`: the declared inputs at their workspace paths; the command's working directory,
  and its outputs are named relative to it (as `output_paths`, and `output_files` for servers of
  REAPI 2.0);
- `toolchain/`: the toolchain tree, the sandbox's root: folders with their permission bits (the
  `unix_mode` node property), files with their executable bit, symlinks. A worker writes it out
  once per Directory digest and binds it as the root, as mk does locally.

The platform names the OS and the architecture (`OSFamily`, `ISA`, which BuildGrid matches
against its bots). An mk worker reports each output's blake3 digest as its node property
`mk.blake3`, so a client can name it without downloading it; every download checks it.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import TYPE_CHECKING

from mk.cache.reapi.digests import Sha256
from mk.cache.reapi.merkle import DirectoryBuilder
from mk.cache.tree import Kind, Tree
from mk.engine.actions import Action
from mk.engine.execute import command_environment

if TYPE_CHECKING:
    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

EXECROOT = "execroot"
TOOLCHAIN = "toolchain"
BLAKE3_PROPERTY = "mk.blake3"
_ISA = {"x86_64": "x86-64", "aarch64": "aarch64", "armv7l": "armv7l", "riscv64": "riscv64", "ppc64le": "ppc64le"}


def platform_properties() -> tuple[tuple[str, str], ...]:
    """This machine's OS and architecture, as actions ask for them and workers offer them."""
    machine = platform.machine()
    return (("ISA", _ISA.get(machine, machine)), ("OSFamily", "linux"))


def command_message(action: Action) -> re_pb2.Command:
    """The Command of a command action: its argv and whole environment, its outputs (relative to
    `execroot/`, its working directory), and the platform it needs."""
    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

    assert action.command is not None
    outputs = sorted(a.path for a in action.outputs)
    properties = [re_pb2.Platform.Property(name=n, value=v) for n, v in platform_properties()]
    return re_pb2.Command(
        arguments=list(action.command),
        environment_variables=[re_pb2.Command.EnvironmentVariable(name=k, value=v)
                               # one slot: the Command is part of the remote action's key
                               for k, v in sorted(command_environment(action, 1).items())],
        output_files=outputs, output_paths=outputs, working_directory=EXECROOT,
        platform=re_pb2.Platform(properties=properties))


def toolchain_directory(tree: Tree, sha256: Callable[[str], Sha256]) -> tuple[Sha256, dict[Sha256, bytes],
                                                                             dict[Sha256, str]]:
    """A toolchain tree as a Directory tree: its root digest, its Directory messages, and the
    blake3 of each file's SHA-256. What the sandbox cannot use is left out, as when mk writes a
    toolchain out locally: device nodes and fifos (the sandbox has its own /dev), setuid bits.
    A hard link becomes a file of the same content (the worker links equal files again)."""
    builder = DirectoryBuilder()
    files: dict[Sha256, str] = {}
    by_path = {e.path: e for e in tree.entries}
    builder.add_folder("", 0o755)
    for entry in tree.entries:
        if entry.kind is Kind.DIR:
            builder.add_folder(entry.path, entry.mode & 0o777)
        elif entry.kind in (Kind.FILE, Kind.HARDLINK):
            file = entry if entry.kind is Kind.FILE else by_path[entry.target]
            digest = sha256(file.digest)
            files[digest] = file.digest
            builder.add_file(entry.path, digest, bool(file.mode & 0o111))
        elif entry.kind is Kind.SYMLINK:
            builder.add_symlink(entry.path, entry.target)
    root, directories = builder.finish()
    return root, directories, files
