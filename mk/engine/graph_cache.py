"""Skips loading and analysis when nothing they looked at has changed (like ninja's .ninja_log).

The loader records every file it read or checked for, and every folder it listed, with a stat
signature. The analysed graph is pickled beside those observations, sealed with a keyed digest
(the key is this cache's own secret), and is unpickled only when the seal checks; the next build
re-stats the observations and reuses the graph when all signatures match. A signature taken
within one timestamp
tick of recording is not trusted, so an edit in the same tick cannot be missed.
"""

from __future__ import annotations

import os
import pickle
import stat
import time
from pathlib import Path
from typing import Any, TypeVar

import blake3

from mk.cache.fsutil import mark_used, write_atomic
from mk.cache.seal import SEAL_BYTES, seal, unseal
from mk.cache.stat_cache import RACY_NS
from mk.engine.cache_parts import GRAPHS

_FORMAT = 3
_MAGIC = b"mk-graph\n"
Signature = tuple[int, ...] | None

T = TypeVar("T")


def _file_signature(path: str) -> Signature:
    """Everything stat says that changes with the content: the file was read or listed."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_mode, st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def _type_signature(path: str) -> Signature:
    """Only what kind of file it is: the file was merely checked for (a source's content is
    the rebuilder's business, not analysis's)."""
    try:
        return (stat.S_IFMT(os.stat(path).st_mode),)
    except (FileNotFoundError, NotADirectoryError):
        return None


_SIGNATURES = {True: _file_signature, False: _type_signature}


class NotUtf8Error(ValueError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


class Observations:
    """What loading depended on: path -> (whole stat?, signature); None: the path did not exist."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[bool, Signature]] = {}

    def is_file(self, path: Path) -> bool:
        """Whether `path` is a regular file, remembered so a later change invalidates the graph."""
        key = str(path)
        if key not in self.seen:
            self.seen[key] = (False, _type_signature(key))
        signature = self.seen[key][1]
        return signature is not None and stat.S_ISREG(signature[0])

    def read_text(self, path: Path) -> str:
        """The file's text; a file that is not UTF-8 is an error naming it and the first bad byte."""
        self.depends_on(path)
        data = path.read_bytes()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise NotUtf8Error(f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} cannot be decoded",
                               line) from None

    def depends_on(self, path: Path) -> None:
        """A file whose content loading used."""
        self.seen[str(path)] = (True, _file_signature(str(path)))

    def listed(self, folder: str) -> None:
        """A folder whose entries were listed (its mtime changes when entries come or go)."""
        self.seen[folder] = (True, _file_signature(folder))


def _code_fingerprint() -> list[tuple[str, Signature]]:
    """mk's own sources: a changed rule implementation must not reuse an old graph."""
    package = Path(__file__).resolve().parent.parent
    files = sorted(str(p) for p in package.rglob("*.py"))
    return [(f, _file_signature(f)) for f in files]


class GraphCache:
    def __init__(self, cache_root: Path, workspace_root: Path, patterns: list[str]) -> None:
        self.cache_root = cache_root
        name = blake3.blake3(repr((str(workspace_root), patterns)).encode()).hexdigest()[:32]
        self.file = cache_root / GRAPHS.name / f"{name}.pickle"
        self.results_file = self.file.with_suffix(".results")  # see RecentResults

    def load(self, kind: type[T]) -> T | None:
        loaded = self._read()
        if loaded is None:
            return None
        version, recorded_at, code, seen, graph = loaded
        if version != _FORMAT or not isinstance(graph, kind) or code != _code_fingerprint():
            return None
        for path, (whole, signature) in seen.items():
            if whole and signature is not None and signature[1] >= recorded_at - RACY_NS:
                return None
            if _SIGNATURES[whole](path) != signature:
                return None
        mark_used(self.file)
        return graph

    def save(self, graph: object, observations: Observations) -> None:
        data = pickle.dumps((_FORMAT, time.time_ns(), _code_fingerprint(), observations.seen, graph),
                            protocol=pickle.HIGHEST_PROTOCOL)
        write_atomic(self.file, _MAGIC + seal(data, _secret(self.file.parent)))

    def observed(self) -> dict[str, bool] | None:
        """The paths the last saved analysis looked at (True: its content or listing), or None."""
        loaded = self._read()
        if loaded is None:
            return None
        return {str(path): bool(whole) for path, (whole, _signature) in loaded[3].items()}

    def _read(self) -> tuple[Any, ...] | None:
        """The saved tuple, only if its keyed digest proves this cache wrote it unchanged.

        The graph carries the parts of action keys fixed at analysis, so a cached graph that was
        altered, by a flipped bit or by hand, must never be unpickled: it could run a changed
        command and file its result under the original key."""
        try:
            with open(self.file, "rb") as f:
                blob = f.read()
        except OSError:
            return None
        data = unseal(blob[len(_MAGIC):], _secret(self.file.parent)) if blob.startswith(_MAGIC) else None
        if data is None:
            return None
        try:
            loaded = pickle.loads(data)
        except Exception:  # authentic bytes of an older mk, say: analyse again
            return None
        return loaded if isinstance(loaded, tuple) and len(loaded) == 5 else None

def _secret(folder: Path) -> bytes:
    """This cache's key for authenticating graphs: 32 random bytes, made once, readable by its owner.

    A missing or damaged key is replaced; graphs saved under the old one are then analysed again."""
    path = folder / "key"
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = b""
    if len(secret) != SEAL_BYTES:  # (a blake3 key is as long as its digest)
        write_atomic(path, os.urandom(SEAL_BYTES), mode=0o600)
        secret = path.read_bytes()  # a concurrent build may have renamed its own key in last
    return secret
