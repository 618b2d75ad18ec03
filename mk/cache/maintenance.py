"""`mk cache stats|gc|verify`: look after the local cache."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from mk.cache.action_cache import ActionCache, ActionResult
from mk.cache.local import LocalCache, remove_tree
from mk.cache.toolchains import FOLDER as TOOLCHAINS


@dataclass(frozen=True)
class CacheStats:
    blobs: int
    blob_bytes: int
    actions: int
    action_bytes: int
    remote_results: int = 0  # results verified from a remote cache (see cache.remote)
    remote_result_bytes: int = 0
    toolchains: int = 0  # trees written out for sandboxes (see cache.toolchains)
    toolchain_bytes: int = 0


@dataclass(frozen=True)
class GcReport:
    removed_files: int
    freed_bytes: int
    remaining_bytes: int


@dataclass(frozen=True)
class VerifyReport:
    blobs_checked: int
    corrupt_blobs: tuple[str, ...]
    broken_actions: tuple[str, ...]


def stats(cache: LocalCache) -> CacheStats:
    _warn_about_strays(cache)
    blob_sizes = [_size(cache.cas.path(d)) for d in cache.cas.digests()]
    action_sizes = [_size(cache.ac.path(k)) for k in cache.ac.all_keys()]
    remote_sizes = [_size(p) for p in _remote_results(cache)]
    toolchains = _toolchains(cache)
    return CacheStats(len(blob_sizes), sum(blob_sizes), len(action_sizes), sum(action_sizes),
                      len(remote_sizes), sum(remote_sizes), len(toolchains), sum(map(_tree_size, toolchains)))


def _toolchains(cache: LocalCache) -> list[Path]:
    root = cache.root / TOOLCHAINS
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _tree_size(path: Path) -> int:
    """Bytes of the files under `path`, each inode once (a toolchain shares inodes between files)."""
    seen: dict[tuple[int, int], int] = {}
    for folder, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def _drop_toolchains(cache: LocalCache) -> tuple[int, int]:
    """Written-out toolchains are copies of trees in the store: dropped whole, they are written
    again (from verified blobs) by the next build that needs them."""
    removed = freed = 0
    for path in _toolchains(cache):
        freed += _tree_size(path)
        removed += 1
        remove_tree(path)
    return removed, freed


def _remote_results(cache: LocalCache) -> list[Path]:
    """Results remembered from remote caches: `remote-ac/<namespace>/<2 hex>/<key>`."""
    return [mirror.path(key) for mirror in _mirrors(cache) for key in mirror.all_keys()]


def _mirrors(cache: LocalCache) -> list[ActionCache]:
    root = cache.root / "remote-ac"
    return [ActionCache(root, n.name) for n in sorted(root.iterdir()) if n.is_dir()] if root.is_dir() else []


def _warn_about_strays(cache: LocalCache) -> None:
    """Name what mk never writes where results and blobs live (it is left alone), rather than trip
    on it."""
    results = [*cache.ac.strays(), *(path for mirror in _mirrors(cache) for path in mirror.strays())]
    for where, paths in (("action cache", results), ("content store", cache.cas.strays())):
        for path in paths:
            kind = "folder" if path.is_dir() else "file"
            print(f"mk: warning: ignoring {path}: a stray {kind} in the {where} (mk never writes one there)",
                  file=sys.stderr)


def gc(cache: LocalCache, max_size: int) -> GcReport:
    """Delete least recently used blobs and action results until the cache fits in `max_size`.

    A cache hit touches only the action result, so a blob counts as used as recently as the
    newest result that names it. Results whose blobs are gone are removed too, so no entry
    points at nothing.
    """
    with cache.lock(exclusive=True):
        _warn_about_strays(cache)
        removed, freed = _remove_temp_files(cache)
        toolchains, toolchain_bytes = _drop_toolchains(cache)
        removed, freed = removed + toolchains, freed + toolchain_bytes
        files: list[tuple[int, int, Path]] = []
        last_used: dict[str, int] = {}
        for key in cache.ac.all_keys():
            path = cache.ac.path(key)
            st = path.stat()
            files.append((st.st_mtime_ns, st.st_size, path))
            result = cache.ac.get(key)
            for digest in result.blobs(cache.cas) if result else []:
                last_used[digest] = max(last_used.get(digest, 0), st.st_mtime_ns)
        for path in _remote_results(cache):  # their blobs may be only on the remote: nothing to check
            st = path.stat()
            files.append((st.st_mtime_ns, st.st_size, path))
        for digest in cache.cas.digests():
            path = cache.cas.path(digest)
            st = path.stat()
            files.append((max(st.st_mtime_ns, last_used.get(digest, 0)), st.st_size, path))
        files.sort()
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= max_size:
                break
            path.unlink()
            total -= size
            freed += size
            removed += 1
        for key in list(cache.ac.all_keys()):
            result = cache.ac.get(key)
            if result is None or not result.complete(cache.cas):
                path = cache.ac.path(key)
                with contextlib.suppress(FileNotFoundError):
                    size = path.stat().st_size
                    path.unlink()
                    total -= size
                    freed += size
                    removed += 1
        return GcReport(removed, freed, total)


def verify(cache: LocalCache) -> VerifyReport:
    """Re-hash every blob (dropping corrupt ones) and drop action results that lost a blob."""
    with cache.lock(exclusive=True):
        _warn_about_strays(cache)
        _drop_toolchains(cache)
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


def _remove_temp_files(cache: LocalCache) -> tuple[int, int]:
    """Temp files of writers that were killed. Under the exclusive lock no writer is running."""
    removed = freed = 0
    for folder in (cache.cas.root, cache.ac.root, cache.root / "remote-ac"):
        for temp in folder.glob("**/.tmp-*") if folder.is_dir() else ():
            freed += _size(temp)
            temp.unlink(missing_ok=True)
            removed += 1
    return removed, freed


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


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
