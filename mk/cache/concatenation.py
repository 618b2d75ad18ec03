"""Blobs written one after the other (an initramfs of separately compressed archives), with the
SHA-256 of the whole remembered by its digest, so that no one reads the result again to learn it.

Both hashes of the whole are carried over from the hashing of its leading blobs: this process
keeps the state of the two hashes after each run of leading blobs it wrote (a few, most recent
first), so a build that changes only the last, small blobs hashes only those. Every blob is still
read verified as before; a state is kept only after the bytes it hashed were verified, and the
remembered SHA-256 is filed under the blake3 that was computed from the very same bytes, so a
mistake here can only file a fact under a digest nothing asks about.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any, BinaryIO

import blake3

from mk.cache.cas import ContentStore
from mk.cache.facts import SHA256, sha256_fact

_KEPT = 8  # states of leading runs kept (each a few hundred bytes)


class _Hashing:
    """The blake3 and SHA-256 of some bytes so far, and their length."""

    def __init__(self) -> None:
        self.blake3: Any = blake3.blake3()
        self.sha256: Any = hashlib.sha256()
        self.size = 0

    def copy(self) -> _Hashing:
        other = _Hashing()
        other.blake3, other.sha256, other.size = self.blake3.copy(), self.sha256.copy(), self.size
        return other

    def update(self, chunk: bytes) -> None:
        self.blake3.update(chunk)
        self.sha256.update(chunk)
        self.size += len(chunk)


_states: dict[tuple[str, ...], _Hashing] = {}  # leading blob digests -> the hashing after them
_lock = threading.Lock()


def concatenate(cas: ContentStore, digests: Sequence[str], out: BinaryIO) -> None:
    """Write the blobs `digests` to the plain file `out`, each verified, and remember the SHA-256 of
    the whole under its blake3. Like `ContentStore.write_to`, it may raise CorruptBlobError after
    writing some bytes: callers publish nothing before it returns."""
    wanted = tuple(digests)
    with _lock:
        known = next((n for n in range(len(wanted), 0, -1) if wanted[:n] in _states), 0)
        hashing = _states[wanted[:known]].copy() if known else _Hashing()
    for digest in wanted[:known]:  # their hashing is known: copied in the kernel, verified
        cas.write_to(digest, None, out, plain_file=True)
    out.flush()
    for count in range(known + 1, len(wanted) + 1):
        for chunk in cas.stream(wanted[count - 1]):  # verified by the end of each blob
            hashing.update(chunk)
            out.write(chunk)
        if count < len(wanted):
            with _lock:
                _states[wanted[:count]] = hashing.copy()
                while len(_states) > _KEPT:
                    del _states[next(iter(_states))]
    out.flush()
    cas.facts.learn(SHA256, hashing.blake3.hexdigest(), lambda: sha256_fact(hashing.sha256.hexdigest(), hashing.size))
