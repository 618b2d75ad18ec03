"""The local cache on disk as `du` sees it, and as `mk cache stats` shows it, for the tests of
cache maintenance."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import Workspace

# The parts of the cache whose files gc evicts, least recently used first (see mk.cache.parts).
EVICTABLE_PARTS = ("cas", "ac", "remote-ac", "stat", "reapi-digests", "facts", "graphs", "explain", "logs",
                   "debian-indices", "by-sha256")


def du(path: Path) -> int:
    """Bytes on disk under `path`, as `du` counts them (each inode once, folders included)."""
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def on_disk(path: Path) -> int:
    """The bytes one file (or one folder, without what it holds) takes on disk."""
    return path.stat().st_blocks * 512


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []


def entries_under(path: Path) -> list[Path]:
    """What `mk cache stats` counts as entries: files, but the graphs' key (state, not an entry)."""
    return [p for p in files_under(path) if p.relative_to(p.parents[1]) != Path("graphs/key")]


def last_use(cache_dir: Path) -> dict[Path, float]:
    """Each file gc may evict and when it was last used, by the documented rule: its modification
    time, and for a blob the newest of that and the local action results that name it."""
    from mk.cache.action_cache import ActionCache, ActionResult
    from mk.cache.cas import ContentStore

    when = {p: p.stat().st_mtime for name in EVICTABLE_PARTS for p in files_under(cache_dir / name)
            if p != cache_dir / "graphs/key"}
    cas, ac = ContentStore(cache_dir), ActionCache(cache_dir)
    for key in ac.all_keys():
        used = ac.path(key).stat().st_mtime
        for digest in ActionResult.decode(ac.path(key).read_bytes()).blobs(cas):
            when[cas.path(digest)] = max(when[cas.path(digest)], used)
    return when


# A line of `mk cache stats`: size, entries, part, what it holds [what gc does with it]
_STATS_LINE = re.compile(r"^ *(?P<size>\d+(?:\.\d)? (?:B|KiB|MiB|GiB)) +(?P<files>\d+)  (?P<part>\S+) +(?P<what>.*)$")


def cache_stats(ws: Workspace, cache_dir: Path | None = None) -> dict[str, tuple[str, int, str]]:
    """`mk cache stats` (of `ws`'s cache, or of `cache_dir`), checked line by line: part -> (size,
    entries, what it holds [what gc does])."""
    cache = cache_dir or ws.cache_dir
    result = ws.mk("cache", "stats", env={"MK_CACHE_DIR": str(cache)})
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[:2] == [f"cache: {cache.resolve()}", "      size  entries  part"], result.out
    parts = {}
    for line in lines[2:]:
        match = _STATS_LINE.match(line)
        assert match, line
        parts[match["part"]] = (match["size"], int(match["files"]), match["what"])
    return parts
