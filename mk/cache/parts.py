"""The parts of the local cache: each folder (or file) mk keeps under the cache root, and what
`mk cache gc` does with it.

Every layer declares the parts it writes (the cache's own are here, the engine's in
`engine/cache_parts.py`, a rule family's in its `Family`), and `mk cache stats|gc` are handed all
of them, so that no folder mk writes goes uncounted. What gc does depends on the part's policy:

- evictable: each file is one entry, and its modification time is when it was last used (mk
  touches an entry when it uses it). gc removes entries least recently used first, until the
  whole cache fits. Files of the part named in `kept` are state, not entries.
- dropped: copies that mk makes again when it needs them; gc removes them whole, every time.
- kept: small state; gc leaves it, and counts it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Policy(enum.Enum):
    EVICTABLE = "evictable"
    DROPPED = "dropped by gc"
    KEPT = "kept"


@dataclass(frozen=True)
class CachePart:
    name: str  # a folder directly under the cache root, or a file there (the lock)
    holds: str  # what it holds, in words, for `mk cache stats`
    policy: Policy
    kept: tuple[str, ...] = ()  # files directly in an evictable folder that are state, not entries
    is_file: bool = False

    @property
    def shown(self) -> str:
        """How messages name it: a folder with a trailing slash."""
        return self.name if self.is_file else f"{self.name}/"


BLOBS = CachePart("cas", "blobs: outputs, logs and downloads, compressed", Policy.EVICTABLE)
RESULTS = CachePart("ac", "action results", Policy.EVICTABLE)
REMOTE_RESULTS = CachePart("remote-ac", "results verified from remote caches", Policy.EVICTABLE)
FIXED_OUTPUTS = CachePart("by-sha256", "the blob of each download pinned by sha256 (packages, source files, tarballs)",
                          Policy.EVICTABLE)
STAT_CACHES = CachePart("stat", "stat caches of source files, one per workspace", Policy.EVICTABLE)
REAPI_DIGESTS = CachePart("reapi-digests", "SHA-256 digests of blobs, for remote execution", Policy.EVICTABLE)
FACTS = CachePart("facts", "what was learnt from blobs' bytes (SHA-256s, busybox applets), by blob digest",
                  Policy.EVICTABLE)
TOOLCHAINS = CachePart("toolchains", "toolchains and input trees written out for sandboxes", Policy.DROPPED)
SCRATCH = CachePart("tmp", "scratch space of running builds (what dead ones left is removed)", Policy.KEPT)
LOCK = CachePart("lock", "the cache's lock", Policy.KEPT, is_file=True)

CACHE_PARTS = (BLOBS, RESULTS, REMOTE_RESULTS, FIXED_OUTPUTS, STAT_CACHES, REAPI_DIGESTS, FACTS, TOOLCHAINS,
               SCRATCH, LOCK)
