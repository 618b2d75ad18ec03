"""One leased action, run by `mk worker`: inputs fetched, the command run in mk's sandbox, outputs sent.

The action is laid out as `remote_action` says. Its toolchain is written out once per Directory
digest (`toolchains/reapi-<sha256>-N/`, through the same code as a local build's), so a warm worker
neither downloads nor writes it again; every blob it downloads lands in its local content store
(verified against both digests, and remembered by SHA-256), so an input it has seen before is not
downloaded again either. The command runs in a scratch folder that is removed afterwards; outputs
are stored, uploaded, and only then named in the ActionResult, so a worker stopped half-way
leaves no result, only a lease the server gives to another worker.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import stat
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mk.cache.cas import ContentStore
from mk.cache.local import LocalCache
from mk.cache.reapi.cas_client import (
    SMALL_BLOB,
    BlobSource,
    RemoteCas,
    from_proto,
    in_memory,
    local_blob,
    proto_digest,
)
from mk.cache.reapi.digests import DigestIndex, Sha256, sha256_bytes
from mk.cache.reapi.merkle import walk
from mk.cache.toolchains import Toolchains
from mk.cache.tree import Entry, Kind, Tree
from mk.engine import sandbox
from mk.engine.execute import RunningProcesses, run_sandboxed
from mk.engine.remote_action import BLAKE3_PROPERTY, EXECROOT, TOOLCHAIN

if TYPE_CHECKING:
    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

_DOWNLOADS = 8
_DIRECTORIES_KEPT = 100_000


class LeaseRefused(Exception):
    """An action this worker cannot run as asked (not laid out as mk lays actions out)."""


@dataclass
class LeaseContext:
    """What every lease of one worker shares."""

    remote: RemoteCas
    cache: LocalCache
    index: DigestIndex
    toolchains: Toolchains
    worker_name: str
    directories: _DirectoryReader = field(init=False)

    def __post_init__(self) -> None:
        self.directories = _DirectoryReader(self.remote)

    @property
    def cas(self) -> ContentStore:
        return self.cache.cas


def run(context: LeaseContext, action: re_pb2.Action, processes: RunningProcesses,
        ran: Callable[[], None] = lambda: None) -> re_pb2.ActionResult:
    """Run `action`; its ActionResult, once every blob it names is on the server. `ran` is called
    when the command has ended, before its outputs are stored and sent."""
    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

    remote = context.remote
    timing = re_pb2.ExecutedActionMetadata(worker=context.worker_name)
    timing.worker_start_timestamp.GetCurrentTime()
    timing.input_fetch_start_timestamp.GetCurrentTime()
    directories = context.directories
    command, root = re_pb2.Command(), re_pb2.Directory()
    # One BatchReadBlobs for both: each call to a busy server costs more than the bytes.
    remote.read_messages({from_proto(action.command_digest): command, from_proto(action.input_root_digest): root})
    directories.keep(from_proto(action.input_root_digest), root)
    subtrees = {d.name: from_proto(d.digest) for d in root.directories}
    if TOOLCHAIN not in subtrees or EXECROOT not in subtrees or command.working_directory != EXECROOT:
        raise LeaseRefused(f"mk worker runs actions laid out as mk lays them out (an input root of '{EXECROOT}/' "
                           f"and '{TOOLCHAIN}/', working in '{EXECROOT}'); this one is not")
    toolchain = _toolchain_root(context, subtrees[TOOLCHAIN], directories)
    outputs = list(command.output_paths) or list(command.output_files)
    with context.cache.scratch_dir(f"lease-{uuid.uuid4().hex[:16]}") as scratch:  # leases run side by side
        execroot = scratch / "execroot"
        execroot.mkdir()
        inputs = _write_execroot(context, subtrees[EXECROOT], directories, execroot)
        for path in outputs:
            _inside(execroot, path).parent.mkdir(parents=True, exist_ok=True)
        layout = sandbox.Layout(toolchain, execroot, scratch / "tmp", tuple(inputs),
                                tuple(os.path.dirname(p) for p in outputs))
        env = {v.name: v.value for v in command.environment_variables}
        timing.input_fetch_completed_timestamp.GetCurrentTime()
        timing.execution_start_timestamp.GetCurrentTime()
        finished = run_sandboxed(list(command.arguments), env, layout, processes)
        code = finished.code
        timing.execution_completed_timestamp.GetCurrentTime()
        ran()
        timing.output_upload_start_timestamp.GetCurrentTime()
        if processes.cancelled.is_set():
            raise InterruptedError("the worker is stopping")
        blobs: dict[Sha256, BlobSource] = {}
        result = re_pb2.ActionResult(exit_code=code)
        for path in sorted(outputs) if code == 0 else ():
            file = _inside(execroot, path)
            if not os.path.isfile(file) or os.path.islink(file):
                continue  # the client says which declared output is missing
            blake3 = context.cas.put_file(file)
            digest = context.index.sha256(blake3, context.cas)
            blobs[digest] = local_blob(context.cas, blake3)
            node = re_pb2.OutputFile(path=path, digest=proto_digest(digest),
                                     is_executable=bool(os.stat(file).st_mode & stat.S_IXUSR))
            node.node_properties.properties.add(name=BLAKE3_PROPERTY, value=blake3)
            result.output_files.append(node)
        for data, field in ((finished.stdout, result.stdout_digest), (finished.stderr, result.stderr_digest)):
            digest = sha256_bytes(data)
            blobs[digest] = in_memory(data)
            field.CopyFrom(proto_digest(digest))
    remote.upload_missing(blobs)
    timing.output_upload_completed_timestamp.GetCurrentTime()
    timing.worker_completed_timestamp.GetCurrentTime()
    result.execution_metadata.CopyFrom(timing)
    return result


class _DirectoryReader:
    """Directory messages by digest, each read once and kept (they are named by their content):
    actions that share inputs share their Directories, and a warm worker reads them no more."""

    def __init__(self, remote: RemoteCas) -> None:
        self.remote = remote
        self._lock = threading.Lock()
        self._read: dict[Sha256, re_pb2.Directory] = {}

    def keep(self, digest: Sha256, directory: re_pb2.Directory) -> None:
        with self._lock:
            if len(self._read) >= _DIRECTORIES_KEPT:
                self._read.clear()
            self._read[digest] = directory

    def keep_all(self, found: dict[Sha256, re_pb2.Directory]) -> None:
        for digest, directory in found.items():
            self.keep(digest, directory)

    def has(self, digest: Sha256) -> bool:
        with self._lock:
            return digest in self._read

    def __call__(self, digest: Sha256) -> re_pb2.Directory:
        from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

        with self._lock:
            found = self._read.get(digest)
        if found is None:
            found = self.remote.read_message(digest, re_pb2.Directory())
            self.keep(digest, found)
        return found


def _toolchain_root(context: LeaseContext, digest: Sha256, directories: _DirectoryReader) -> Path:
    """The toolchain written out, once per Directory digest, with the files it needs downloaded."""

    def tree() -> Tree:
        if not directories.has(digest):
            directories.keep_all(context.remote.read_tree(digest))
        nodes = list(walk(digest, directories))
        blake3 = _download(context, [n.digest for n in nodes if n.digest is not None])
        entries = []
        for node in nodes:
            if node.kind == "dir":
                entries.append(Entry(node.path, Kind.DIR, 0o755 if node.mode is None else node.mode & 0o7777))
            elif node.kind == "file":
                assert node.digest is not None
                entries.append(Entry(node.path, Kind.FILE, 0o755 if node.executable else 0o644,
                                     digest=blake3[node.digest], size=node.digest.size))
            else:
                entries.append(Entry(node.path, Kind.SYMLINK, 0o777, target=node.target))
        return Tree.build(entries)

    return context.toolchains.root_for_named(f"reapi-{digest.hash}", tree)


def _write_execroot(context: LeaseContext, digest: Sha256, directories: _DirectoryReader, execroot: Path) -> list[str]:
    """The inputs written under `execroot`, read-only; their paths."""
    if not directories.has(digest):  # new inputs: their Directories in one call, not one per folder
        directories.keep_all(context.remote.read_tree(digest))
    nodes = list(walk(digest, directories))
    blake3 = _download(context, [n.digest for n in nodes if n.digest is not None])
    files = []
    for node in nodes:
        target = _inside(execroot, node.path)
        if node.kind == "dir":
            target.mkdir(exist_ok=True)
        elif node.kind == "symlink":
            target.symlink_to(node.target)
            files.append(node.path)
        else:
            assert node.digest is not None
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as out:
                context.cas.copy_to(blake3[node.digest], out, node.digest.size)
            os.chmod(target, 0o555 if node.executable else 0o444)
            files.append(node.path)
    return files


def _download(context: LeaseContext, digests: Sequence[Sha256]) -> dict[Sha256, str]:
    """Each blob in the local store (downloaded only if it is not there already); its blake3."""
    found: dict[Sha256, str] = {}
    wanted: list[Sha256] = []
    for digest in dict.fromkeys(digests):
        known = context.index.known_blake3(digest)
        if known is not None and context.cas.has(known):
            found[digest] = known
        else:
            wanted.append(digest)
    lock = threading.Lock()

    def fetch(digest: Sha256) -> None:
        blake3 = context.remote.download(digest, context.cas)
        context.index.remember(blake3, digest)
        with lock:
            found[digest] = blake3

    small = [d for d in wanted if d.size <= SMALL_BLOB]
    if small:  # in one BatchReadBlobs (each verified), not one call each
        for digest, data in context.remote.read_batch(small).items():
            blake3 = context.cas.put_bytes(data)
            context.index.remember(blake3, digest)
            found[digest] = blake3
    _parallel(fetch, [d for d in wanted if d not in found])  # the others, and any the batch did not bring
    return found


def _parallel(work: Callable[[Sha256], None], items: Sequence[Sha256]) -> None:
    if len(items) <= 1:
        for item in items:
            work(item)
        return
    with cf.ThreadPoolExecutor(_DOWNLOADS, thread_name_prefix="mk-worker-down") as pool:
        for future in [pool.submit(work, item) for item in items]:
            future.result()


def _inside(root: Path, path: str) -> Path:
    """`path` under `root`; a path that would climb out (absolute, or with '..') is refused."""
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or "" in parts:
        raise LeaseRefused(f"the action names a path outside its working directory: '{path}'")
    return root.joinpath(*parts)

