"""What each tree output of a workspace was before its last change, for `mk diff TARGET`.

Every build records, for each tree artifact it made or took from a cache, its digest; the file
keeps the last two *different* digests of each artifact path. So after "build, edit, build" the
two trees are known, and `mk diff TARGET` compares them. The trees themselves stay in the content
store (until `mk cache gc` removes them); this small file only names them. It is written only
when a tree changed, so a no-op build reads it and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgpack

from mk.cache.fsutil import write_atomic
from mk.cache.local import workspace_name
from mk.engine.cache_parts import TREE_HISTORY

_FORMAT = 1


class TreeHistory:
    """`<cache>/tree-history/<workspace>.msgpack`: artifact path -> [older digest, newer digest]."""

    def __init__(self, cache_root: Path, workspace_root: Path) -> None:
        self.file = cache_root / TREE_HISTORY.name / f"{workspace_name(workspace_root)}.msgpack"

    def _load(self) -> dict[str, list[str]]:
        """What was recorded; an unreadable file is as good as none (it only helps `mk diff`)."""
        try:
            data = msgpack.unpackb(self.file.read_bytes())
        except (OSError, ValueError, msgpack.UnpackException):
            return {}
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("trees"), dict):
            return {}
        return {str(path): [str(d) for d in digests] for path, digests in data["trees"].items()
                if isinstance(digests, list)}

    def record(self, trees: Mapping[str, str]) -> None:
        """Remember the digest of each tree artifact (path -> digest) a build made."""
        history = self._load()
        changed = False
        for path, digest in sorted(trees.items()):
            known = history.get(path, [])
            if not known or known[-1] != digest:
                history[path] = [*known[-1:], digest]
                changed = True
        if changed:
            write_atomic(self.file, msgpack.packb({"format": _FORMAT, "trees": history}))

    def before(self, path: str, current: str) -> str | None:
        """The digest of the tree at `path` before the build that made `current` (None: no other
        tree of it is known)."""
        known = self._load().get(path, [])
        if known and known[-1] == current:
            return known[0] if len(known) == 2 else None
        return known[-1] if known else None
