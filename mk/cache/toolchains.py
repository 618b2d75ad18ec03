"""Trees on disk: a tree manifest written out once per digest, for sandboxes to bind.

A toolchain is bound as a sandbox's root; any other tree a command takes as input (a source
tree, say) is bound read-only at its path in the execroot. `toolchains/<digest>-<layout>/`
holds the tree's files (decompressed from the content store; files of equal content are hard
links to one inode), folders and symlinks, read-only. Device nodes and fifos are left out: the
sandbox brings its own /dev. Setuid and setgid bits are dropped, as no sandbox could use them.
A folder appears under its final name only once complete (it is built in the cache's scratch
space and renamed), so a crash or Ctrl-C leaves nothing that the next build does not sweep away.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from mk.cache.cas import ContentStore
from mk.cache.local import LocalCache
from mk.cache.parts import TOOLCHAINS
from mk.cache.tree import Kind, Tree, TreeError

# Folders the sandbox mounts over (see mk.engine.sandbox), made in every written-out toolchain so
# that the whole tree can be bound as the root with one mount.
MOUNT_POINTS = ("dev", "proc", "tmp", "mk/execroot")
_LAYOUT = 2  # in each folder's name: a copy written by an older mk (without mount points) is not used
_PLAIN = "tree"  # the layout of a tree bound as an input: no mount points added to it


class Toolchains:
    def __init__(self, cache: LocalCache, cas: ContentStore) -> None:
        self.cache = cache
        self.root = cache.root / TOOLCHAINS.name
        self.cas = cas  # the build's store: it may read what it lacks from the remote cache
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def root_for(self, digest: str) -> Path:
        """The folder holding the toolchain whose manifest has `digest` (with the sandbox's mount
        points), written out if need be."""
        return self._folder(digest, str(_LAYOUT), MOUNT_POINTS, lambda: self._decoded(digest))

    def root_for_named(self, name: str, tree: Callable[[], Tree]) -> Path:
        """The folder holding a toolchain known by `name` (a remote worker's: its Directory
        digest), written out from `tree()` if need be."""
        return self._folder(name, str(_LAYOUT), MOUNT_POINTS, tree)

    def tree_for(self, digest: str) -> Path:
        """The folder holding the tree whose manifest has `digest`, as it is, written out if need be."""
        return self._folder(digest, _PLAIN, (), lambda: self._decoded(digest))

    def _decoded(self, digest: str) -> Tree:
        return Tree.decode(self.cas.read_bytes(digest))

    def _folder(self, name: str, layout: str, mount_points: tuple[str, ...], tree: Callable[[], Tree]) -> Path:
        final = self.root / f"{name}-{layout}"
        if final.is_dir():
            return final
        with self._lock:
            lock = self._locks.setdefault(final.name, threading.Lock())
        with lock:  # two actions of one build needing the same tree write it once
            if not final.is_dir():
                self._materialise(name, tree(), final, mount_points)
        return final

    def _materialise(self, name: str, tree: Tree, final: Path, mount_points: tuple[str, ...]) -> None:
        self.cas.prefetch(e.digest for e in tree.files())  # from a remote cache, in parallel
        with self.cache.scratch_dir(f"tree-{name[:20]}") as scratch:
            partial = scratch / "root"
            partial.mkdir()
            _write(tree, partial, self.cas, mount_points)
            self.root.mkdir(exist_ok=True)
            try:
                os.rename(partial, final)
            except OSError:
                if not final.is_dir():  # only another process's complete copy may take its place
                    raise


def _write(tree: Tree, root: Path, cas: ContentStore, mount_points: tuple[str, ...]) -> None:
    written: dict[tuple[str, int], Path] = {}
    folders: list[tuple[Path, int]] = []
    links: list[tuple[Path, Path]] = []  # after every file: a link may sort before its file
    for entry in tree.entries:  # sorted: a folder comes before what it holds
        path = root / entry.path
        if entry.kind is Kind.DIR:
            path.mkdir()
            folders.append((path, entry.mode))
        elif entry.kind is Kind.FILE:
            mode = _file_mode(entry.mode)
            if (same := written.get((entry.digest, mode))) is not None:
                os.link(same, path)
                continue
            with open(path, "xb") as out:
                cas.copy_to(entry.digest, out, entry.size)
            os.chmod(path, mode)
            written[(entry.digest, mode)] = path
        elif entry.kind is Kind.SYMLINK:
            os.symlink(entry.target, path)
        elif entry.kind is Kind.HARDLINK:
            links.append((root / entry.target, path))
    for target, path in links:
        os.link(target, path)
    for mount_point in mount_points:  # where the sandbox mounts its own; whatever the tree had there is hidden
        folder = root / mount_point
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise TreeError(f"'{mount_point}' in the toolchain is not a folder; the sandbox mounts its own there")
        folder.mkdir(parents=True, exist_ok=True)
    for path, mode in reversed(folders):  # deepest first, each once filled
        os.chmod(path, mode & 0o555 | 0o500)


def _file_mode(mode: int) -> int:
    """Read-only, executable where the tree says so; never setuid, setgid or writable."""
    return 0o555 if mode & 0o111 else 0o444
