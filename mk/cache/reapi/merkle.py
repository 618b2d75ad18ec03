"""Input roots as REAPI `Directory` Merkle trees, and back.

`DirectoryBuilder` collects files, symlinks, folders and whole subtrees (known by digest) at
slash-separated paths and serialises the tree bottom-up, each `Directory` with its entries sorted
by name as the specification requires (so equal trees get equal digests). A folder may carry its
permission bits as the `unix_mode` node property; mk's toolchains do. `walk` reads a tree the other
way, for a worker writing an input root out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mk.cache.reapi.cas_client import proto_digest
from mk.cache.reapi.digests import Sha256, sha256_bytes

if TYPE_CHECKING:
    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2


class MerkleError(ValueError):
    pass


@dataclass
class _Folder:
    files: dict[str, tuple[Sha256, bool]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    folders: dict[str, _Folder] = field(default_factory=dict)
    subtrees: dict[str, Sha256] = field(default_factory=dict)
    mode: int | None = None


class DirectoryBuilder:
    def __init__(self) -> None:
        self._root = _Folder()

    def add_file(self, path: str, digest: Sha256, executable: bool) -> None:
        folder, name = self._parent(path)
        folder.files[name] = (digest, executable)

    def add_symlink(self, path: str, target: str) -> None:
        folder, name = self._parent(path)
        folder.symlinks[name] = target

    def add_folder(self, path: str, mode: int | None = None) -> None:
        folder = self._folder(path.split("/")) if path else self._root
        folder.mode = mode

    def add_subtree(self, path: str, digest: Sha256) -> None:
        folder, name = self._parent(path)
        folder.subtrees[name] = digest

    def _parent(self, path: str) -> tuple[_Folder, str]:
        *parents, name = path.split("/")
        return self._folder(parents), name

    def _folder(self, names: list[str]) -> _Folder:
        folder = self._root
        for name in names:
            folder = folder.folders.setdefault(name, _Folder())
        return folder

    def finish(self) -> tuple[Sha256, dict[Sha256, bytes]]:
        """The root's digest, and every Directory message of the tree by digest."""
        blobs: dict[Sha256, bytes] = {}
        return _serialise(self._root, blobs), blobs


def _serialise(folder: _Folder, blobs: dict[Sha256, bytes]) -> Sha256:
    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

    names = [*folder.files, *folder.symlinks, *folder.folders, *folder.subtrees]
    if len(set(names)) != len(names):
        clash = next(n for n in names if names.count(n) > 1)
        raise MerkleError(f"'{clash}' is named twice in one folder of the input root")
    directories = {name: _serialise(child, blobs) for name, child in folder.folders.items()}
    directories.update(folder.subtrees)
    message = re_pb2.Directory(
        files=[re_pb2.FileNode(name=name, digest=proto_digest(d), is_executable=x)
               for name, (d, x) in sorted(folder.files.items())],
        directories=[re_pb2.DirectoryNode(name=name, digest=proto_digest(d))
                     for name, d in sorted(directories.items())],
        symlinks=[re_pb2.SymlinkNode(name=name, target=t) for name, t in sorted(folder.symlinks.items())],
    )
    if folder.mode is not None:
        message.node_properties.unix_mode.value = folder.mode
    data = message.SerializeToString(deterministic=True)
    digest = sha256_bytes(data)
    blobs[digest] = data
    return digest


@dataclass(frozen=True)
class Node:
    """One entry of a tree read back: a folder (with its mode, if given), a file or a symlink."""

    path: str
    kind: str  # "dir", "file" or "symlink"
    digest: Sha256 | None = None  # a file's
    executable: bool = False
    target: str = ""
    mode: int | None = None


def walk(root: Sha256, directory: Callable[[Sha256], re_pb2.Directory], prefix: str = "") -> Iterator[Node]:
    """Every entry under the Directory `root`, folders before what they hold; `directory` reads one
    Directory message by digest. Names that could climb out of the tree are refused."""
    message = directory(root)
    for file in message.files:
        yield Node(_join(prefix, file.name), "file", Sha256(file.digest.hash, file.digest.size_bytes),
                   file.is_executable)
    for link in message.symlinks:
        yield Node(_join(prefix, link.name), "symlink", target=link.target)
    for child in message.directories:
        digest = Sha256(child.digest.hash, child.digest.size_bytes)
        path = _join(prefix, child.name)
        properties = directory(digest).node_properties
        yield Node(path, "dir", mode=properties.unix_mode.value if properties.HasField("unix_mode") else None)
        yield from walk(digest, directory, path)


def _join(prefix: str, name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise MerkleError(f"the input root names an entry '{name}' under '{prefix or '/'}'")
    return f"{prefix}/{name}" if prefix else name
