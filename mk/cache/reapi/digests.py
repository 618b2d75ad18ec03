"""blake3 <-> SHA-256: mk names blobs by blake3, REAPI servers by SHA-256 (BuildGrid offers no other).

Each blob's SHA-256 is computed once, from the verified local blob, and remembered in the cache
part `reapi-digests/` (`<xx>/<blake3>` holds "SHA256 SIZE", `<yy>/sha256-<SHA256>` the blake3), so a
build does not hash an unchanged input again. A pair learnt from a remote (an output's blake3 that
an mk worker reports beside its SHA-256) is remembered too; every download checks both digests, so a
wrong pair is found, dropped and reported, never used to accept wrong bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from mk.cache.cas import ContentStore
from mk.cache.fsutil import write_atomic
from mk.cache.parts import REAPI_DIGESTS

_REVERSE = "sha256-"


@dataclass(frozen=True, order=True)
class Sha256:
    """A REAPI digest: the SHA-256 of the bytes, in hex, and their size."""

    hash: str
    size: int

    def resource(self) -> str:
        """As ByteStream resource names end: blobs/HASH/SIZE."""
        return f"blobs/{self.hash}/{self.size}"


def sha256_bytes(data: bytes) -> Sha256:
    return Sha256(hashlib.sha256(data).hexdigest(), len(data))


def sha256_of_file(path: str, blake3: str) -> Sha256 | None:
    """The SHA-256 of a file read once, or None when its bytes no longer have the blake3 `blake3`."""
    import blake3 as blake3_module

    sha256, b3, size = hashlib.sha256(), blake3_module.blake3(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            b3.update(chunk)
            size += len(chunk)
    return Sha256(sha256.hexdigest(), size) if b3.hexdigest() == blake3 else None


class DigestIndex:
    def __init__(self, cache_root: Path) -> None:
        self.root = cache_root / REAPI_DIGESTS.name
        self._lock = threading.Lock()
        self._forward: dict[str, Sha256] = {}
        self._reverse: dict[str, str] = {}

    def sha256(self, blake3: str, cas: ContentStore) -> Sha256:
        """The SHA-256 of local blob `blake3`: remembered, or read (verified) and hashed once."""
        known = self.known_sha256(blake3)
        if known is not None:
            return known
        hasher, size = hashlib.sha256(), 0
        for chunk in cas.stream(blake3):
            hasher.update(chunk)
            size += len(chunk)
        found = Sha256(hasher.hexdigest(), size)
        self.remember(blake3, found)
        return found

    def known_sha256(self, blake3: str) -> Sha256 | None:
        with self._lock:
            found = self._forward.get(blake3)
        if found is not None:
            return found
        try:
            text = (self.root / blake3[:2] / blake3).read_text(encoding="ascii")
            hash_, size = text.split()
            found = Sha256(hash_, int(size))
        except (OSError, ValueError):
            return None
        with self._lock:
            self._forward[blake3] = found
        return found

    def known_blake3(self, sha256: Sha256) -> str | None:
        with self._lock:
            found = self._reverse.get(sha256.hash)
        if found is not None:
            return found
        try:
            found = (self.root / sha256.hash[:2] / f"{_REVERSE}{sha256.hash}").read_text(encoding="ascii").strip()
        except OSError:
            return None
        if self.known_sha256(found) != sha256:  # both halves, or neither
            return None
        with self._lock:
            self._reverse[sha256.hash] = found
        return found

    def remember(self, blake3: str, sha256: Sha256) -> None:
        with self._lock:
            if self._forward.get(blake3) == sha256:
                return
            self._forward[blake3] = sha256
            self._reverse[sha256.hash] = blake3
        write_atomic(self.root / blake3[:2] / blake3, f"{sha256.hash} {sha256.size}\n".encode())
        write_atomic(self.root / sha256.hash[:2] / f"{_REVERSE}{sha256.hash}", f"{blake3}\n".encode())

    def forget(self, blake3: str, sha256: Sha256) -> None:
        """A pair that proved wrong (the bytes did not match both)."""
        with self._lock:
            self._forward.pop(blake3, None)
            self._reverse.pop(sha256.hash, None)
        for path in (self.root / blake3[:2] / blake3, self.root / sha256.hash[:2] / f"{_REVERSE}{sha256.hash}"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
