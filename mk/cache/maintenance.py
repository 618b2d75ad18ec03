"""`mk cache stats|gc|verify`: look after the local cache.

Stats and gc are handed every part of the cache (see `cache.parts`), and count the whole cache
folder as `du` does (see `cache.usage`), so the size they report is the size on disk.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mk.cache.action_cache import ActionCache, ActionResult
from mk.cache.local import LocalCache, remove_tree
from mk.cache.parts import BLOBS, REMOTE_RESULTS, RESULTS, SCRATCH, TOOLCHAINS, CachePart, Policy
from mk.cache.usage import Meter, Usage, disk_usage, on_disk


@dataclass(frozen=True)
class PartStats:
    shown: str  # "cas/", "lock"
    holds: str
    policy: Policy
    entries: int  # in an evictable part, what gc may evict (no temp file, stray or state); else its files
    size: int  # bytes on disk


@dataclass(frozen=True)
class CacheStats:
    parts: tuple[PartStats, ...]  # every declared part, then what mk does not write
    size: int  # all of the cache folder, as `du` counts it

    @property
    def entries(self) -> int:
        return sum(p.entries for p in self.parts)


@dataclass(frozen=True)
class GcReport:
    removed_files: int
    freed_bytes: int
    remaining_bytes: int
    kept: tuple[str, ...]  # the small state gc keeps, as stats names it ("lock", "graphs/key")
    not_mine: tuple[str, ...]  # what is in the cache folder and mk does not write


@dataclass(frozen=True)
class VerifyReport:
    blobs_checked: int
    corrupt_blobs: tuple[str, ...]
    broken_actions: tuple[str, ...]


_NOT_MINE = "not written by mk: left alone"


def stats(cache: LocalCache, parts: Sequence[CachePart]) -> CacheStats:
    """What each part of the cache holds, and what the cache folder takes in all."""
    _warn_about_strays(cache)
    return _measure(cache, parts)


def _measure(cache: LocalCache, parts: Sequence[CachePart]) -> CacheStats:
    meter = Meter()
    found = []
    for part in parts:
        usage = meter.usage(cache.root / part.name)
        found.append(PartStats(part.shown, part.holds, part.policy, _entry_count(cache, part, usage), usage.size))
    for path in _not_mine(cache, parts):
        usage = meter.usage(path)
        found.append(PartStats(_shown(path), _NOT_MINE, Policy.KEPT, usage.files, usage.size))
    folder = on_disk(os.lstat(cache.root))  # the cache folder itself
    return CacheStats(tuple(found), folder + sum(p.size for p in found))


def _entry_count(cache: LocalCache, part: CachePart, usage: Usage) -> int:
    if part is BLOBS:
        return sum(1 for _ in cache.cas.digests())
    if part is RESULTS:
        return sum(1 for _ in cache.ac.all_keys())
    if part is REMOTE_RESULTS:
        return sum(1 for mirror in _mirrors(cache) for _ in mirror.all_keys())
    if part.policy is Policy.EVICTABLE:
        return sum(1 for _ in _files_of(cache.root / part.name, part.kept))
    return usage.files


def _not_mine(cache: LocalCache, parts: Sequence[CachePart]) -> list[Path]:
    names = {p.name for p in parts}
    return sorted(p for p in cache.root.iterdir() if p.name not in names)


def _shown(path: Path) -> str:
    return f"{path.name}/" if path.is_dir() and not path.is_symlink() else path.name


def _warn_about_strays(cache: LocalCache) -> None:
    """Name what mk never writes where results and blobs live (it is left alone), rather than trip
    on it."""
    results = [*cache.ac.strays(), *(path for mirror in _mirrors(cache) for path in mirror.strays())]
    for where, paths in (("action cache", results), ("content store", cache.cas.strays())):
        for path in paths:
            kind = "folder" if path.is_dir() else "file"
            print(f"mk: warning: ignoring {path}: a stray {kind} in the {where} (mk never writes one there)",
                  file=sys.stderr)


def gc(cache: LocalCache, max_size: int, parts: Sequence[CachePart]) -> GcReport:
    """Evict the least recently used entries until the whole cache folder fits in `max_size`.

    Every part counts (see `cache.parts`): copies that are made again when needed are dropped
    first, small state is kept, and entries of the evictable parts go least recently used first.
    A cache hit touches only the action result, so a blob counts as used as recently as the
    newest result that names it (and goes after it). Results whose blobs are gone are removed
    too, so no entry points at nothing.
    """
    with cache.lock(exclusive=True):
        _warn_about_strays(cache)
        before = _measure(cache, parts).size
        removed = _remove_temp_files(cache) + _remove_dead_scratch(cache)
        removed += sum(_drop(cache.root / p.name) for p in parts if p.policy is Policy.DROPPED)
        total = disk_usage(cache.root).size
        for _when, _rank, size, path, top in sorted(_entries(cache, parts)):
            if total <= max_size:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
                total -= size + _remove_emptied_folders(path.parent, top)
        removed += _remove_incomplete_results(cache)
        left = _measure(cache, parts)
        return GcReport(removed, max(0, before - left.size), left.size, _kept(cache, parts),
                        tuple(_shown(p) for p in _not_mine(cache, parts)))


def _entries(cache: LocalCache, parts: Sequence[CachePart]) -> Iterator[tuple[int, int, int, Path, Path]]:
    """Each evictable entry: when it was last used, 1 for a blob (at a tie it goes after the
    results naming it, so none is left incomplete), its size on disk, its path and its part's folder."""
    last_used: dict[str, int] = {}
    for key in cache.ac.all_keys():
        path = cache.ac.path(key)
        st = path.stat()
        yield st.st_mtime_ns, 0, on_disk(st), path, cache.ac.root
        result = cache.ac.get(key)
        for digest in result.blobs(cache.cas) if result else []:
            last_used[digest] = max(last_used.get(digest, 0), st.st_mtime_ns)
    for mirror in _mirrors(cache):  # their blobs may be only on the remote: nothing to check
        for key in mirror.all_keys():
            st = mirror.path(key).stat()
            yield st.st_mtime_ns, 0, on_disk(st), mirror.path(key), mirror.root.parent
    for digest in cache.cas.digests():
        st = cache.cas.path(digest).stat()
        yield max(st.st_mtime_ns, last_used.get(digest, 0)), 1, on_disk(st), cache.cas.path(digest), cache.cas.root
    for part in parts:
        if part.policy is Policy.EVICTABLE and part not in (BLOBS, RESULTS, REMOTE_RESULTS):
            yield from _files_of(cache.root / part.name, part.kept)


_TEMP = (".tmp-", ".part-")  # what atomic_writer and downloads write before renaming into place


def _files_of(top: Path, kept: Sequence[str]) -> Iterator[tuple[int, int, int, Path, Path]]:
    """The entries of an evictable folder: its files but temp files (which may be a writer's,
    being written) and those that are state."""
    for folder, _dirs, files in os.walk(top):
        for name in files:
            path = Path(folder, name)
            if name.startswith(_TEMP) or (path.parent == top and name in kept):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = path.lstat()
                yield st.st_mtime_ns, 0, on_disk(st), path, top


def _remove_emptied_folders(folder: Path, top: Path) -> int:
    """Remove `folder` and those above it up to `top` (not included) while they are empty; the
    bytes that freed."""
    freed = 0
    while folder != top and top in folder.parents:
        try:
            size = on_disk(os.lstat(folder))
            folder.rmdir()
        except OSError:  # not empty
            break
        freed += size
        folder = folder.parent
    return freed


def _remove_incomplete_results(cache: LocalCache) -> int:
    removed = 0
    for key in list(cache.ac.all_keys()):
        result = cache.ac.get(key)
        if result is None or not result.complete(cache.cas):
            with contextlib.suppress(FileNotFoundError):
                cache.ac.path(key).unlink()
                removed += 1
    return removed


def _drop(folder: Path) -> int:
    """Remove what a dropped part holds (the folder stays); the number of files that was."""
    removed = 0
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        removed += disk_usage(path).files
        remove_tree(path)
    return removed


def _remove_dead_scratch(cache: LocalCache) -> int:
    before = disk_usage(cache.root / SCRATCH.name).files
    cache.sweep_stale_scratch()
    return before - disk_usage(cache.root / SCRATCH.name).files


def _kept(cache: LocalCache, parts: Sequence[CachePart]) -> tuple[str, ...]:
    """The state gc keeps that is there, as `mk cache stats` names it."""
    kept = []
    for part in parts:
        if part.policy is Policy.KEPT and (cache.root / part.name).exists():
            kept.append(part.shown)
        kept += [f"{part.name}/{name}" for name in part.kept if (cache.root / part.name / name).exists()]
    return tuple(kept)


def _mirrors(cache: LocalCache) -> list[ActionCache]:
    """The results remembered from each remote cache: `remote-ac/<namespace>/<2 hex>/<key>`."""
    root = cache.root / REMOTE_RESULTS.name
    return [ActionCache(root, n.name) for n in sorted(root.iterdir()) if n.is_dir()] if root.is_dir() else []


def verify(cache: LocalCache) -> VerifyReport:
    """Re-hash every blob (dropping corrupt ones) and drop action results that lost a blob."""
    with cache.lock(exclusive=True):
        _warn_about_strays(cache)
        _drop(cache.root / TOOLCHAINS.name)  # copies of trees: written again from verified blobs
        checked = 0
        corrupt = []
        for digest in list(cache.cas.digests()):
            checked += 1
            if not cache.cas.verify(digest):
                corrupt.append(digest)
        broken = []
        for key in list(cache.ac.all_keys()):
            try:
                result = ActionResult.decode(cache.ac.path(key).read_bytes())
                intact = result.complete(cache.cas)
            except ValueError:
                intact = False
            if not intact:
                broken.append(key)
                cache.ac.delete(key)
        return VerifyReport(checked, tuple(corrupt), tuple(broken))


def _remove_temp_files(cache: LocalCache) -> int:
    """Temp files of writers that were killed. Under the exclusive lock no writer is running
    where results and blobs live; elsewhere a temp file may be a live writer's, and is left."""
    removed = 0
    for folder in (cache.cas.root, cache.ac.root, cache.root / REMOTE_RESULTS.name):
        for temp in folder.glob("**/.tmp-*") if folder.is_dir() else ():
            temp.unlink(missing_ok=True)
            removed += 1
    return removed


def parse_size(text: str) -> int:
    """'500M', '2G', '1.5GiB', '1000' -> bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = cleaned, ""
    if cleaned and cleaned[-1] in units:
        number, unit = cleaned[:-1], cleaned[-1]
    try:
        return int(float(number) * units[unit])
    except ValueError:
        raise ValueError(f"not a size: {text!r} (try 500M or 2G)") from None
