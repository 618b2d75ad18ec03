"""Reads .debs in worker processes, so that two packages unpack at once on two cores.

On threads of one process they did not: `mk build -j 2` of the sshd package set took as long as
`-j 1`. liblzma lets the GIL go, but the tar reader, the hashing of each member and the store's
checks between its calls hold it, and each thread, back from liblzma, waits for it.

The workers are forked from a fork server that imported the .deb reader once, so a worker costs a
fork, not an interpreter's start-up, and inherits none of the build server's sockets or locks.
Each writes blobs to the content store as any mk process sharing the cache does (a temp file
renamed into place). They live as long as the process that started them, and are used by at most
the build's -j actions at a time. Where no pool can be made (no /dev/shm for its locks), the
package is read on the calling thread, as before.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from mk.cache.cas import ContentStore
from mk.rules.deb.debfile import DebContents, DebError, read_deb

_lock = threading.Lock()
_pools: list[ProcessPoolExecutor] = []  # the one pool, once started


def read_deb_in_worker(deb: Path, cas: ContentStore, what: str) -> DebContents:
    """`read_deb` of the file `deb` into `cas`, in a worker process. Raises DebError as it does, and
    OSError when the worker died (the next call starts new workers)."""
    try:
        pool = _pool()
    except OSError:
        with open(deb, "rb") as f:
            return read_deb(f, cas, what)
    try:
        return pool.submit(_read, str(deb), str(cas.root.parent), what).result()
    except BrokenProcessPool:
        with _lock:
            if _pools and _pools[0] is pool:
                _pools.clear()
        raise OSError(f"{what}: the process unpacking it died") from None


def _pool() -> ProcessPoolExecutor:
    with _lock:
        if not _pools:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            _pools.append(ProcessPoolExecutor(os.cpu_count() or 1, mp_context=context))
        return _pools[0]


_stores: dict[str, ContentStore] = {}  # in a worker: the store of each cache it was given


def _read(deb: str, cache: str, what: str) -> DebContents:
    store = _stores.get(cache)
    if store is None:
        store = _stores[cache] = ContentStore(Path(cache))
    try:
        with open(deb, "rb") as f:
            return read_deb(f, store, what)
    except (DebError, OSError):
        raise
    except Exception as e:  # one that may not survive the way back (an __init__ of its own), as text
        raise DebError(f"{what}: {type(e).__name__}: {e}") from None
