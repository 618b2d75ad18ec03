"""Facts learnt from a blob's bytes (its SHA-256, the applets of a busybox binary), remembered by
the blob's digest, so that a build that meets the same blob again does not read it again.

A fact is a pure function of the bytes, and a blob's digest names its bytes, so a fact remembered
for a digest holds for every build. Each is computed from bytes the store verified, and kept in the
cache part `facts/` as `<kind>/<first two hex digits>/<digest>`, written to a temp file and renamed
(a crash leaves the old fact, the new one, or none), and sealed with the blob's digest as the key: a
record that was damaged, or copied under another blob's name, does not unseal, and is dropped and
learnt again from the bytes, never used.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from mk.cache.fsutil import mark_used, write_atomic
from mk.cache.parts import FACTS
from mk.cache.seal import seal, unseal


class BlobFacts:
    def __init__(self, cache_root: Path) -> None:
        self.root = cache_root / FACTS.name

    def path(self, kind: str, digest: str) -> Path:
        return self.root / kind / digest[:2] / digest

    def known(self, kind: str, digest: str) -> bytes | None:
        """The fact of `kind` remembered for blob `digest` (marked used, for gc); None when none is,
        or it is damaged (then it is removed)."""
        path = self.path(kind, digest)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        payload = unseal(data, _key(digest))
        if payload is None or not payload.startswith(_label(kind)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return None
        mark_used(path)
        return payload[len(_label(kind)):]

    def learn(self, kind: str, digest: str, compute: Callable[[], bytes]) -> bytes:
        """The fact of `kind` for blob `digest`: remembered, or `compute`d (from the verified bytes)
        and remembered."""
        found = self.known(kind, digest)
        if found is None:
            found = compute()
            write_atomic(self.path(kind, digest), seal(_label(kind) + found, _key(digest)))
        return found


SHA256 = "sha256"  # the kind of fact a blob's SHA-256 is remembered as (see `sha256_fact`)


def sha256_fact(sha256: str, size: int) -> bytes:
    """A blob's SHA-256 (in hex) and size, as a fact of kind SHA256."""
    return f"{sha256} {size}".encode()


def read_sha256_fact(fact: bytes) -> tuple[str, int]:
    sha256, size = fact.decode().split()
    return sha256, int(size)


def _key(digest: str) -> bytes:
    """The seal's key: the blob's digest (32 bytes), which binds the record to its blob."""
    return bytes.fromhex(digest)


def _label(kind: str) -> bytes:
    """What a sealed record begins with, binding it to its kind of fact."""
    return kind.encode() + b"\0"
