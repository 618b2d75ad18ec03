"""The image's initramfs as separately compressed cpio segments, concatenated (the kernel unpacks
such a file archive after archive): one segment per layer of the root, and one for what the image
itself adds. Each segment is its own cached action, so an edit rewrites the segment it touches
and a concatenation, not the whole root.

The one thing to know: the segments partition the *final* root, they do not replay the layers.
Every path is in exactly one segment, that of the highest layer that supplied that very entry,
so the kernel's unpacker never writes over a file. (It opens an existing file with O_TRUNC: over
a hard link of an earlier archive it would rewrite the file the link shares an inode with; and a
path that a later layer removed would need a whiteout the initramfs format does not have.) Only
directories repeat: each segment holds the ancestors of its entries, with the root's metadata, so
unpacking one again changes nothing (mkdir fails with EEXIST, chown and chmod set the same
values). A hard link goes with the file it links to, as the kernel forgets inode numbers at the
end of each archive. Formats that read the root's tree (verity, tar, OCI) never see segments.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from mk.cache import concatenation
from mk.cache.tree import Entry, Kind, Tree
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.rule_api import RuleContext
from mk.rules.archive import archive_action

SEGMENTS = "initrd.d"  # the folder of the segments, beside initrd.img


def split(root: Tree, layers: Sequence[Tree]) -> list[Tree]:
    """`root` cut into len(layers) + 1 segments, lowest first: one per layer, then the entries
    no layer supplied as the root has them (the image's own files and boot files)."""
    by_path = {e.path: e for e in root.entries}
    own = len(layers)
    segment_of = dict.fromkeys(by_path, own)
    for index, layer in enumerate(layers):
        for entry in layer.entries:
            if by_path.get(entry.path) == entry:
                segment_of[entry.path] = index
    members: list[dict[str, Entry]] = [{} for _ in range(own + 1)]
    for entry in root.entries:
        linked = entry.target if entry.kind is Kind.HARDLINK else entry.path
        chosen = members[segment_of[linked]]
        chosen[entry.path] = entry
        parent = posixpath.dirname(entry.path)
        while parent and parent not in chosen:
            chosen[parent] = by_path[parent]
            parent = posixpath.dirname(parent)
    return [Tree(tuple(chosen[p] for p in sorted(chosen))) for chosen in members]


def write_segment_trees(io: ActionIO, root: Tree, layers: Sequence[Tree], first_output: int) -> None:
    """Writes the segments of `root` as the action's outputs from `first_output` on."""
    for index, segment in enumerate(split(root, layers)):
        io.write_tree(segment, first_output + index)


def concatenate(io: ActionIO) -> None:
    """The initrd: the compressed segments one after the other, lowest first, read from the store
    (they are not written out for it first). Its SHA-256, which the manifest gives, is learnt on
    the way; a build that changed only the last segments hashes only those (see concatenation)."""
    with open(io.output(), "wb") as out:
        concatenation.concatenate(io.cas, [io.digests[path] for path in io.strings("segments")], out)


def add_initrd_actions(ctx: RuleContext, segments: Sequence[tuple[Artifact, Artifact]], initrd: Artifact) -> None:
    """For each (segment tree, compressed segment) an action writing the tree as a zstd cpio, and
    the concatenation of them all into `initrd`."""
    for tree, segment in segments:
        ctx.add_action(archive_action(ctx, "InitrdSegment", tree, segment, "cpio", "zstd"))
    written = tuple(segment for _, segment in segments)
    ctx.add_action(Action(owner=ctx.label, mnemonic="Initrd", inputs=written, outputs=(initrd,),
                          params={"segments": [s.path for s in written]}, function=concatenate, staged_inputs=False))
