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

import msgpack

from mk.cache.fsutil import write_atomic


@dataclass(frozen=True)
class OutputFile:
    path: str
    digest: str
    executable: bool


@dataclass(frozen=True)
class ActionResult:
    outputs: tuple[OutputFile, ...]
    exit_code: int
    log_digest: str

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(
            {
                "outputs": [[o.path, o.digest, o.executable] for o in self.outputs],
                "exit_code": self.exit_code,
                "log": self.log_digest,
            }
        )
        return packed

    @staticmethod
    def decode(data: bytes) -> ActionResult:
        """Parse an entry; raises ValueError on anything malformed (it may come from a remote)."""
        try:
            raw = msgpack.unpackb(data)
            outputs = tuple(
                OutputFile(str(p), _hex(d), bool(x)) for p, d, x in raw["outputs"]
            )
            return ActionResult(outputs, int(raw["exit_code"]), _hex(raw["log"]))
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
            raise ValueError(f"malformed action result: {e}") from None


_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def _hex(value: object) -> str:
    if not isinstance(value, str) or not _HEX_DIGEST.fullmatch(value):
        raise ValueError(f"not a blake3 hex digest: {value!r}")
    return value


class ActionCache:
    def __init__(self, root: Path) -> None:
        self.root = root / "ac"
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
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._where(key))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def all_keys(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            for entry in sorted(shard.iterdir()):
                if not entry.name.startswith(".tmp-"):
                    yield entry.name
