"""Two trees compared, entry by entry, for people:

    - -rw-r--r-- 0/0 6 1a2b3c4d5e6f /etc/gone
    ~ /etc/motd: content 6 B -> 11 B (1a2b3c4d5e6f -> 9f8e7d6c5b4a); owner 0/0 -> 1/2
    + -rw-r--r-- 0/0 6 1a2b3c4d5e6f /etc/new

Added and removed entries are shown as `mk ls` shows them; a changed one says what changed: its
kind, content (sizes and digests), mode, owner, link target or device numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from mk.cache import tree_listing
from mk.cache.tree import Entry, Kind, Tree
from mk.cache.units import human_size


@dataclass(frozen=True)
class Change:
    path: str
    before: Entry | None  # None: added
    after: Entry | None  # None: removed


def compare(old: Tree, new: Tree) -> list[Change]:
    """Every path whose entry differs, was added or was removed, in path order."""
    before = {e.path: e for e in old.entries}
    after = {e.path: e for e in new.entries}
    return [Change(path, before.get(path), after.get(path)) for path in sorted(before.keys() | after.keys())
            if before.get(path) != after.get(path)]


def content_changes(changes: list[Change]) -> list[tuple[str, str, str]]:
    """(path, digest before, digest after) of each file whose bytes changed: what diffoscope compares."""
    return [(c.path, c.before.digest, c.after.digest) for c in changes
            if c.before is not None and c.after is not None and c.before.kind is c.after.kind is Kind.FILE
            and c.before.digest != c.after.digest]


def describe(before: Entry, after: Entry) -> str:
    """What differs between two entries at one path."""
    if before.kind is not after.kind:
        return f"kind {before.kind.value} -> {after.kind.value}"
    parts = []
    if before.digest != after.digest or before.size != after.size:
        parts.append(f"content {human_size(before.size)} -> {human_size(after.size)} "
                     f"({tree_listing.short_digest(before.digest)} -> {tree_listing.short_digest(after.digest)})")
    if before.mode != after.mode:
        parts.append(f"mode {before.mode:04o} -> {after.mode:04o}")
    if (before.uid, before.gid) != (after.uid, after.gid):
        parts.append(f"owner {before.uid}/{before.gid} -> {after.uid}/{after.gid}")
    if before.target != after.target:
        parts.append(f"link target {before.target} -> {after.target}")
    if (before.major, before.minor) != (after.major, after.minor):
        parts.append(f"device {tree_listing.size_field(before)} -> {tree_listing.size_field(after)}")
    return "; ".join(parts)


def lines(changes: list[Change]) -> list[str]:
    """One line per change: `+ entry`, `- entry` or `~ /path: what changed`."""
    listed = [c for c in changes if c.before is None or c.after is None]
    shown = tree_listing.lines([_side(c) for c in listed])
    entry_line = {id(c): line for c, line in zip(listed, shown, strict=True)}
    out = []
    for change in changes:
        if change.before is None:
            out.append(f"+ {entry_line[id(change)]}")
        elif change.after is None:
            out.append(f"- {entry_line[id(change)]}")
        else:
            out.append(f"~ {tree_listing.shown_path(change.path)}: {describe(change.before, change.after)}")
    return out


def _side(change: Change) -> Entry:
    """The entry of an added or removed path."""
    entry = change.after or change.before
    assert entry is not None, change.path  # compare() makes no change without an entry
    return entry


def summary(changes: list[Change], old: Tree, new: Tree) -> str:
    if not changes:
        return "the trees are identical"
    added = sum(c.before is None for c in changes)
    removed = sum(c.after is None for c in changes)
    sizes = [human_size(sum(e.size for e in tree.files())) for tree in (old, new)]
    return f"{added} added, {removed} removed, {len(changes) - added - removed} changed; files {sizes[0]} -> {sizes[1]}"
