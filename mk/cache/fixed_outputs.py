"""Downloads pinned by sha256 (a Debian package), found by that sha256 wherever they already are.

A download pinned by its sha256 is the same file whoever served it, so before anything goes over
the network it is looked for where it may already be:

- the local store, through a small index beside it (`by-sha256/<2 hex>/<sha256>` holds the
  digest of the blob), since blobs are named by blake3 and lockfiles name files by sha256;
- the shared remote cache, which holds the same index entry, signed, under a key made from the
  sha256 alone (see `remote.fixed_output_key`): unlike an action result, it outlives every
  change to mk that changes action keys, so CI that fills the remote cache keeps every file
  any lockfile used.

Both are hints: bytes are used only when their sha256 is the one asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from mk.cache.cas import ContentStore, CorruptBlobError, MissingBlobError
from mk.cache.fsutil import mark_used, write_atomic
from mk.cache.parts import FIXED_OUTPUTS

if TYPE_CHECKING:
    from mk.cache.remote import RemoteCache


class FixedOutputs:
    def __init__(self, cas: ContentStore, remote: RemoteCache | None) -> None:
        # The local store alone: a local index entry whose blob has been evicted is a miss here,
        # not a blob asked of the remote by its blake3.
        self._store = ContentStore(cas.root.parent)
        self._index = cas.root.parent / FIXED_OUTPUTS.name
        self.remote = remote

    def _entry(self, sha256: str) -> Path:
        return self._index / sha256[:2] / sha256

    def _indexed(self, sha256: str) -> str | None:
        """The blob the local index names for this sha256 (a hint, checked by its reader)."""
        try:
            return self._entry(sha256).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def from_store(self, sha256: str, out: Path) -> bool:
        """Write the file with this sha256 to `out` from the local store; False if it is not there."""
        digest = self._indexed(sha256)
        if digest is None or not self._store.has(digest) or not self._copy(digest, sha256, out):
            return False
        mark_used(self._entry(sha256))
        return True

    def open_from_store(self, sha256: str) -> BinaryIO | None:
        """The file with this sha256, open where the local store keeps it, verified, for a reader
        that only reads it; None if the store does not keep it there as it is (then `from_store`)."""
        digest = self._indexed(sha256)
        if digest is None:
            return None
        try:
            kept = self._store.open_kept(digest)
        except CorruptBlobError:
            return None
        if kept is None:
            return None
        try:
            same = self._store.sha256(digest)[0] == sha256  # (remembered once learnt from verified bytes)
        except (MissingBlobError, CorruptBlobError):
            same = False
        if not same:
            kept.close()
            return None
        mark_used(self._entry(sha256))
        return kept

    @property
    def remote_name(self) -> str:
        return "the remote cache" + (f" {self.remote.config.url}" if self.remote is not None else "")

    def remote_state(self) -> str | None:
        """Why the remote cache cannot be asked (None when it can): for the list of places tried."""
        if self.remote is None:
            return "none configured"
        if not self.remote.reading:
            return "not read in this build (no trusted key, or it stopped answering)"
        return None

    def from_remote(self, sha256: str, out: Path) -> bool:
        """Write the file with this sha256 to `out` from the remote cache; False if it has none."""
        if self.remote is None:
            return False
        digest = self.remote.find_fixed(sha256)
        if digest is None or not self._copy(digest, sha256, out):
            return False
        self._remember(sha256, digest)
        return True

    def keep(self, sha256: str, file: Path) -> None:
        """Store `file`, whose sha256 the caller has checked, and index it here and in the remote
        cache (which uploads it in the background, signed, if this build uploads)."""
        digest = self._store.put_file(file)
        self._remember(sha256, digest)
        if self.remote is not None:
            self.remote.publish_fixed(sha256, digest)

    def _remember(self, sha256: str, digest: str) -> None:
        with contextlib.suppress(OSError):  # only a hint: a full disk costs a download next time
            write_atomic(self._entry(sha256), digest.encode())

    def _copy(self, digest: str, sha256: str, out: Path) -> bool:
        """Write the blob `digest` to `out` if its sha256 is `sha256`. A blob stored as it is (a
        package is) is hard-linked rather than copied, after its blake3 is checked: the callers,
        actions that fetch, only read what they fetched."""
        try:
            linked = self._store.link_to(digest, out)
        except CorruptBlobError:
            return False
        if linked:
            if _sha256_of(out) == sha256:
                return True
            out.unlink()  # (never written through: the link is the store's own file)
            return False
        out.unlink(missing_ok=True)  # a link left there would be written through into the store
        check = hashlib.sha256()
        try:
            with open(out, "wb") as f:
                for chunk in self._store.stream(digest):
                    check.update(chunk)
                    f.write(chunk)
        except (MissingBlobError, CorruptBlobError):
            return False
        return check.hexdigest() == sha256


def _sha256_of(path: Path) -> str:
    check = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            check.update(chunk)
    return check.hexdigest()
