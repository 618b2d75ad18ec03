"""sha256 -> blob digest for downloaded packages, so a .deb is fetched once per cache.

Lockfiles name packages by sha256 while the content store names blobs by blake3. This small
index, kept beside the store, bridges the two. It is only a hint: a copy from the store is
re-hashed and used only if it has the promised sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from mk.cache.cas import ContentStore, CorruptBlobError, MissingBlobError, digest_file
from mk.cache.fsutil import mark_used, write_atomic
from mk.rules.cache_parts import DEB_SHA256


def _entry(cas: ContentStore, sha256: str) -> Path:
    return cas.root.parent / DEB_SHA256.name / sha256[:2] / sha256


def copy(cas: ContentStore, sha256: str, out: Path) -> bool:
    """Write the package with this sha256 to `out` from the store; False if it is not there."""
    try:
        digest = _entry(cas, sha256).read_text().strip()
    except FileNotFoundError:
        return False
    check = hashlib.sha256()
    try:
        with open(out, "wb") as f:
            for chunk in cas.stream(digest):
                check.update(chunk)
                f.write(chunk)
    except (MissingBlobError, CorruptBlobError):
        return False
    if check.hexdigest() != sha256:
        return False
    mark_used(_entry(cas, sha256))
    return True


def remember(cas: ContentStore, sha256: str, downloaded: Path) -> None:
    with contextlib.suppress(OSError):
        write_atomic(_entry(cas, sha256), digest_file(downloaded).encode())
