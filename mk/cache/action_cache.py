"""The action cache: action key -> result (output digests, exit status, log digest), in msgpack.

An entry is written only after every blob it names is in the content store, so a crash can
leave unused blobs behind but never an entry that points at nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import msgpack

from mk.cache.fsutil import mark_used, write_atomic
from mk.cache.parts import RESULTS
from mk.cache.seal import seal, unseal

if TYPE_CHECKING:
    from mk.cache.cas import ContentStore

# An action result is small; anything bigger is not one (a remote or a server must refuse it).
MAX_RESULT_BYTES = 16 << 20


class OutputFile(NamedTuple):
    """A named tuple rather than a dataclass: a no-op build makes one per output, and this is faster.

    `tree`: the blob is a tree manifest, and the result also needs the blobs of its files."""

    path: str
    digest: str
    executable: bool
    tree: bool = False


@dataclass(frozen=True)
class ActionResult:
    outputs: tuple[OutputFile, ...]
    exit_code: int
    log_digest: str

    def encode(self) -> bytes:
        """msgpack, after a checksum of it: a flipped bit in a stored result must not turn it into
        another valid result (a digest naming other bytes, an output under another name)."""
        packed: bytes = msgpack.packb(
            {
                "outputs": [[o.path, o.digest, o.executable, o.tree] for o in self.outputs],
                "exit_code": self.exit_code,
                "log": self.log_digest,
            }
        )
        return seal(packed)

    def blobs(self, cas: ContentStore, log: bool = True) -> list[str]:
        """Every blob this result needs: its outputs, its log, and the files of each tree it output
        (a layer's file contents are not outputs themselves, but the layer is useless without
        them). A tree that cannot be read adds nothing: its own digest, listed, is then found
        missing or bad."""
        from mk.cache.cas import CorruptBlobError, MissingBlobError  # (a no-op build reads no tree)
        from mk.cache.tree import Tree, TreeError

        digests = [o.digest for o in self.outputs] + ([self.log_digest] if log else [])
        for output in self.outputs:
            if output.tree and cas.has(output.digest):
                try:
                    digests += [e.digest for e in Tree.decode(cas.read_bytes(output.digest)).files()]
                except (TreeError, CorruptBlobError, MissingBlobError):
                    continue
        return digests

    def complete(self, cas: ContentStore) -> bool:
        """Whether every blob it needs is in the store: its outputs, and the files of its trees
        (those may also be on the remote cache the store reads from, if it has one)."""
        outputs = {o.digest for o in self.outputs}
        return all(cas.has(d) if d in outputs else cas.obtainable(d) for d in self.blobs(cas, log=False))

    @staticmethod
    def decode(data: bytes) -> ActionResult:
        """Parse an entry; raises ValueError on anything malformed (it may come from a remote)."""
        payload = unseal(data)
        if payload is None:
            raise ValueError("malformed action result: its checksum does not match")
        try:
            raw = msgpack.unpackb(payload)
            outputs = tuple(OutputFile(str(p), _hex(d), bool(x), bool(t)) for p, d, x, t in raw["outputs"])
            return ActionResult(outputs, int(raw["exit_code"]), _hex(raw["log"]))
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
            raise ValueError(f"malformed action result: {e}") from None


_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def _hex(value: object) -> str:
    if not isinstance(value, str) or not _HEX_DIGEST.fullmatch(value):
        raise ValueError(f"not a blake3 hex digest: {value!r}")
    return value


class ActionCache:
    def __init__(self, root: Path, name: str = RESULTS.name) -> None:
        self.root = root / name
        self._prefix = str(self.root) + "/"  # plain strings: this is the no-op build's hot path

    def path(self, key: str) -> Path:
        return Path(self._where(key))

    def _where(self, key: str) -> str:
        return f"{self._prefix}{key[:2]}/{key}"

    def get(self, key: str) -> ActionResult | None:
        try:
            with open(self._where(key), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            return ActionResult.decode(data)
        except ValueError:
            self.delete(key)
            return None

    def put(self, key: str, result: ActionResult) -> None:
        write_atomic(self.path(key), result.encode())

    def touch(self, key: str) -> None:
        """Mark an entry recently used, for least-recently-used garbage collection."""
        mark_used(self._where(key))

    def has(self, key: str, size: int) -> bool:
        """Whether an entry of exactly `size` bytes exists (checked without reading it)."""
        try:
            return os.stat(self._where(key)).st_size == size
        except FileNotFoundError:
            return False

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def all_keys(self) -> Iterator[str]:
        """Every stored key, in order; strays (see `strays`) are passed over."""
        return (path.name for path, is_entry in self._scan() if is_entry)

    def strays(self) -> list[Path]:
        """What no writer of mk leaves here (a file beside the shards, a folder inside one), for
        maintenance to name and leave alone rather than trip on."""
        return [path for path, is_entry in self._scan() if not is_entry]

    def _scan(self) -> Iterator[tuple[Path, bool]]:
        """Everything under the folder but temp files, in order, and whether it is an entry."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if shard.name.startswith(".tmp-"):
                continue
            if not shard.is_dir():
                yield shard, False
                continue
            for path in sorted(shard.iterdir()):
                if not path.name.startswith(".tmp-"):
                    yield path, path.is_file()


class RecentResults:
    """The results the last build of a graph used, in one file, so that a no-op build need not
    open every action-cache entry again. Only a hint: a result is used only while its entry
    still exists in the action cache."""

    def __init__(self, file: Path) -> None:
        self.file = file
        try:
            loaded = msgpack.unpackb(file.read_bytes())
        except (OSError, ValueError, msgpack.UnpackException):
            loaded = None
        self._encoded: dict[str, bytes] = loaded if isinstance(loaded, dict) else {}
        self._saved: dict[str, ActionResult] = {}  # what `save` encoded last, by key
        # Set by the build server: the results it found complete, or made, itself; trusted without
        # a look at the action cache while it runs (a blob lost meanwhile fails the attempt, and
        # the retry uses no remembered result at all).
        self.verified: dict[str, ActionResult] | None = None

    def get(self, key: str) -> tuple[ActionResult, int] | None:
        """The remembered result and the size its action-cache entry had."""
        data = self._encoded.get(key)
        if data is None:
            return None
        try:
            return ActionResult.decode(data), len(data)
        except ValueError:
            return None

    def save(self, results: dict[str, ActionResult]) -> None:
        if results.keys() != self._encoded.keys():
            # A result saved before (the very object) is not encoded again: in the build server, a
            # one-leaf rebuild of 10,000 actions encodes 31.
            saved, encoded = self._saved, self._encoded
            self._encoded = {key: encoded[key] if saved.get(key) is result else result.encode()
                             for key, result in results.items()}
            self._saved = results
            write_atomic(self.file, msgpack.packb(self._encoded))
        else:
            mark_used(self.file)
