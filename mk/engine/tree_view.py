"""`mk ls` and `mk diff`: the trees a build made, read back, listed and compared.

The lines themselves are made in `mk.cache.tree_listing` and `mk.cache.tree_diff`; this module
knows builds: which tree a target's build left, and which one the build before it left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mk.cache import tree_listing
from mk.cache.cas import ContentStore, CorruptBlobError, MissingBlobError
from mk.cache.tree import Entry, Tree, TreeError, dest_path
from mk.engine.errors import MkError, did_you_mean
from mk.engine.tree_history import TreeHistory


@dataclass(frozen=True)
class BuiltTree:
    label: str
    artifact: str  # the path of the tree artifact
    digest: str
    when: str = ""  # for one target over two builds: "previous build" or "this build"

    def header(self, sign: str) -> str:
        """`--- //a:x tree 1a2b3c4d5e6f (previous build)`, as the two sides of a diff are named."""
        note = f" ({self.when})" if self.when else ""
        return f"{sign} {self.label} tree {tree_listing.short_digest(self.digest)}{note}"

    def read(self, cas: ContentStore, command: str) -> Tree:
        shown = tree_listing.short_digest(self.digest)
        try:
            return Tree.decode(cas.read_bytes(self.digest))
        except (MissingBlobError, CorruptBlobError):
            which = f"{self.label}'s {self.when}" if self.when else self.label
            raise MkError(f"{command}: the tree of {which} ({shown}) is no longer in the cache (`mk cache gc` "
                          "removes old entries)") from None
        except TreeError as e:
            raise MkError(f"{command}: the tree of {self.label} ({shown}) is unreadable: {e}") from None


def listing(built: BuiltTree, tree: Tree, paths: Sequence[str]) -> list[str]:
    """`mk ls` lines for the whole tree, or for each of `paths` and what is under it."""
    if not paths or any(not p.strip("/") for p in paths):
        return tree_listing.lines(tree.entries)
    chosen: dict[Entry, None] = {}
    for path in paths:
        try:
            wanted = dest_path(path)
        except TreeError as e:
            raise MkError(f"mk ls: path {e}") from None
        found = tree_listing.under(tree, wanted)
        if not found:
            shown = tree_listing.shown_path(wanted)
            hint = did_you_mean(shown, (tree_listing.shown_path(e.path) for e in tree.entries))
            raise MkError(f"mk ls: {built.label} has nothing at {shown}{hint}")
        chosen.update(dict.fromkeys(found))
    return tree_listing.lines(sorted(chosen, key=lambda e: e.path))


def previous(history: TreeHistory, built: BuiltTree) -> BuiltTree:
    """The tree the build of `built.label` before this one made."""
    digest = history.before(built.artifact, built.digest)
    if digest is None:
        raise MkError(f"mk diff: no earlier build of {built.label} made another tree than this one "
                      f"({tree_listing.short_digest(built.digest)}); change what it is made of and build it again, "
                      "or name a second target to compare with")
    return BuiltTree(built.label, built.artifact, digest, "previous build")
