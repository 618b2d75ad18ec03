"""The REAPI pieces that need no server: endpoints, Directory Merkle trees, the blake3 <-> SHA-256
index, and a toolchain tree as a Directory tree."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc
import pytest

from mk.cache.cas import ContentStore
from mk.cache.reapi import capabilities
from mk.cache.reapi.cas_client import RemoteCas, RemoteError, _Together
from mk.cache.reapi.digests import DigestIndex, Sha256, sha256_bytes
from mk.cache.reapi.endpoint import Endpoint, EndpointError
from mk.cache.reapi.merkle import DirectoryBuilder, MerkleError, walk
from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from mk.cache.tree import Entry, Kind, Tree
from mk.engine.remote_action import toolchain_directory
from mk.engine.remote_exec import RemoteTimings

A, B = sha256_bytes(b"a"), sha256_bytes(b"bb")


def test_an_endpoint_is_grpc_or_grpcs_with_a_port() -> None:
    plain = Endpoint.parse("grpc://127.0.0.1:8980", "main", "secret")
    assert (plain.target, plain.tls, plain.instance) == ("127.0.0.1:8980", False, "main")
    assert plain.metadata() == (("authorization", "Bearer secret"),)
    assert "secret" not in plain.shown()
    tls = Endpoint.parse("grpcs://cluster.example", token="secret")
    assert (tls.target, tls.tls) == ("cluster.example:443", True)
    assert tls.metadata() == ()  # the TLS channel's credentials carry the token


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "grpc://127.0.0.1", "grpc://u:p@host:1", "grpc://h:1/x",
                                 "grpc://h:port"])
def test_an_endpoint_that_is_not_grpc_host_port_is_refused(url: str) -> None:
    with pytest.raises(EndpointError, match="grpc://host:port"):
        Endpoint.parse(url)


def _tree(order: list[tuple[str, Sha256]]) -> tuple[Sha256, dict[Sha256, bytes]]:
    builder = DirectoryBuilder()
    for path, digest in order:
        builder.add_file(path, digest, False)
    builder.add_symlink("d/link", "../a")
    return builder.finish()


def test_equal_trees_have_equal_digests_whatever_the_order_they_were_given_in() -> None:
    one = _tree([("a", A), ("d/e/b", B), ("d/c", A)])
    other = _tree([("d/c", A), ("d/e/b", B), ("a", A)])
    assert one == other
    assert one[0] != _tree([("a", A), ("d/e/b", B), ("d/c", B)])[0]
    root = re_pb2.Directory.FromString(one[1][one[0]])
    assert [f.name for f in root.files] == ["a"] and [d.name for d in root.directories] == ["d"]
    for digest, data in one[1].items():  # each message is stored under its own SHA-256
        assert digest == Sha256(hashlib.sha256(data).hexdigest(), len(data))


def test_a_name_used_twice_in_a_folder_is_refused() -> None:
    builder = DirectoryBuilder()
    builder.add_file("x", A, False)
    builder.add_symlink("x", "y")
    with pytest.raises(MerkleError, match="'x' is named twice"):
        builder.finish()


def test_walk_reads_back_files_folders_modes_and_links() -> None:
    builder = DirectoryBuilder()
    builder.add_folder("bin", 0o555)
    builder.add_file("bin/sh", A, True)
    builder.add_symlink("sh", "bin/sh")
    root, blobs = builder.finish()
    nodes = {n.path: n for n in walk(root, lambda d: re_pb2.Directory.FromString(blobs[d]))}
    assert nodes["bin"].kind == "dir" and nodes["bin"].mode == 0o555
    assert (nodes["bin/sh"].digest, nodes["bin/sh"].executable) == (A, True)
    assert nodes["sh"].target == "bin/sh"


def test_walk_refuses_a_name_that_climbs_out() -> None:
    evil = re_pb2.Directory(files=[re_pb2.FileNode(name="..", digest=re_pb2.Digest(hash=A.hash, size_bytes=1))])
    data = evil.SerializeToString()
    with pytest.raises(MerkleError, match=r"'\.\.'"):
        list(walk(sha256_bytes(data), lambda _: evil))


def test_the_index_remembers_both_ways_across_instances(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    blake3 = cas.put_bytes(b"hello")
    index = DigestIndex(tmp_path)
    assert index.sha256(blake3, cas) == sha256_bytes(b"hello")
    again = DigestIndex(tmp_path)
    assert again.known_sha256(blake3) == sha256_bytes(b"hello")
    assert again.known_blake3(sha256_bytes(b"hello")) == blake3
    again.forget(blake3, sha256_bytes(b"hello"))
    assert DigestIndex(tmp_path).known_sha256(blake3) is None


def test_a_toolchain_tree_becomes_a_directory_tree_the_sandbox_can_use(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    sh, data = cas.put_bytes(b"#!shell"), cas.put_bytes(b"data")
    tree = Tree.build([
        Entry("usr", Kind.DIR, 0o755), Entry("usr/bin", Kind.DIR, 0o755),
        Entry("usr/bin/sh", Kind.FILE, 0o4755, digest=sh, size=7),
        Entry("usr/bin/bash", Kind.HARDLINK, 0o755, target="usr/bin/sh"),
        Entry("usr/share", Kind.FILE, 0o644, digest=data, size=4),
        Entry("bin", Kind.SYMLINK, 0o777, target="usr/bin"),
        Entry("dev-null", Kind.CHAR, 0o666, major=1, minor=3),
    ])
    index = DigestIndex(tmp_path)
    root, blobs, files = toolchain_directory(tree, lambda d: index.sha256(d, cas))
    nodes = {n.path: n for n in walk(root, lambda d: re_pb2.Directory.FromString(blobs[d]))}
    assert "dev-null" not in nodes  # the sandbox brings its own /dev
    assert nodes["usr/bin/bash"].digest == nodes["usr/bin/sh"].digest == sha256_bytes(b"#!shell")
    assert nodes["usr/bin/sh"].executable and not nodes["usr/share"].executable
    assert nodes["bin"].target == "usr/bin" and nodes["usr/bin"].mode == 0o755
    assert files == {sha256_bytes(b"#!shell"): sh, sha256_bytes(b"data"): data}


def _metadata(start_ms: int, command_ms: tuple[int, int], done_ms: int) -> re_pb2.ExecutedActionMetadata:
    metadata = re_pb2.ExecutedActionMetadata(worker="w")
    metadata.input_fetch_start_timestamp.FromMilliseconds(start_ms)
    metadata.execution_start_timestamp.FromMilliseconds(command_ms[0])
    metadata.execution_completed_timestamp.FromMilliseconds(command_ms[1])
    metadata.output_upload_completed_timestamp.FromMilliseconds(done_ms)
    # BuildGrid's own clock (lease assigned, lease reported): not the worker's work.
    metadata.worker_start_timestamp.FromMilliseconds(start_ms - 40)
    metadata.worker_completed_timestamp.FromMilliseconds(done_ms + 40)
    return metadata


def test_remote_timings_split_each_round_trip_at_the_workers_timestamps() -> None:
    timings = RemoteTimings()
    assert timings.line() == ""  # nothing executed remotely: nothing said
    # 1000 ms on the worker, 900 of them the command: 100 ms the worker's own; Execute took 1.25 s.
    timings.add(1.25, _metadata(5_000, (5_050, 5_950), 6_000))
    timings.add(1.50, _metadata(9_000, (9_010, 9_990), 10_000))  # 20 ms; 500 ms beyond
    timings.add(0.40, _metadata(1_000, (1_030, 1_330), 1_360))  # 60 ms; 40 ms beyond
    timings.add(9.0, re_pb2.ExecutedActionMetadata(worker="silent"))  # no timestamps: not counted
    assert timings.line() == "; per action beyond its command (median ms): 60 on the worker, 250 in the server " \
        "and the network"


def _capabilities(stores: list[int], executes: list[int]) -> re_pb2.ServerCapabilities:
    answer = re_pb2.ServerCapabilities()
    answer.cache_capabilities.digest_functions.extend(stores)  # type: ignore[arg-type]
    answer.execution_capabilities.exec_enabled = True
    answer.execution_capabilities.digest_functions.extend(executes)  # type: ignore[arg-type]
    answer.execution_capabilities.digest_function = executes[0]  # type: ignore[assignment]
    return answer


# What BuildGrid 0.4.4 answers GetCapabilities (scripts/buildgrid.py's server), as text.
_BUILDGRID_CAPABILITIES = """
cache_capabilities {
  digest_functions: SHA256
  action_cache_update_capabilities { update_enabled: true }
  max_batch_total_size_bytes: 4193280
  symlink_absolute_path_strategy: DISALLOWED
}
execution_capabilities { digest_function: SHA256 exec_enabled: true digest_functions: SHA256 }
low_api_version { major: 2 }
high_api_version { major: 2 minor: 2 }
"""


def test_digest_choice_is_sha256_for_capabilities_as_buildgrid_answers() -> None:
    from google.protobuf import text_format

    answer = text_format.Parse(_BUILDGRID_CAPABILITIES, re_pb2.ServerCapabilities())
    choice = capabilities.choose(answer)
    assert choice.function == re_pb2.DigestFunction.SHA256 == capabilities.SHA256
    assert choice.said() == "digests SHA-256"
    # Asked to prefer BLAKE3, it still gets SHA-256: BuildGrid offers nothing else.
    assert capabilities.choose(answer, spoken=(capabilities.BLAKE3, capabilities.SHA256)).name == "SHA-256"
    # An older server that sets only the single field of its executor is understood the same way.
    answer.execution_capabilities.ClearField("digest_functions")
    assert capabilities.choose(answer).function == capabilities.SHA256


def test_digest_choice_takes_the_first_spoken_function_that_the_server_stores_and_executes_with() -> None:
    both = _capabilities([re_pb2.DigestFunction.SHA256, re_pb2.DigestFunction.BLAKE3],
                         [re_pb2.DigestFunction.BLAKE3, re_pb2.DigestFunction.SHA256])
    assert capabilities.BLAKE3 == re_pb2.DigestFunction.BLAKE3
    assert capabilities.choose(both, spoken=(capabilities.BLAKE3, capabilities.SHA256)).function == capabilities.BLAKE3
    # mk sends SHA-256 today: offered BLAKE3 too, it says it uses SHA-256.
    assert capabilities.choose(both).said() == "digests SHA-256 (also offered: BLAKE3)"
    # A function the CAS stores but the executor does not take is not offered.
    cas_only = _capabilities([re_pb2.DigestFunction.SHA256, re_pb2.DigestFunction.BLAKE3],
                             [re_pb2.DigestFunction.SHA256])
    assert capabilities.choose(cas_only, spoken=(capabilities.BLAKE3, capabilities.SHA256)).said() == "digests SHA-256"


def test_a_server_without_a_digest_function_mk_sends_is_refused_with_what_it_offers() -> None:
    blake3_only = _capabilities([re_pb2.DigestFunction.BLAKE3], [re_pb2.DigestFunction.BLAKE3])
    with pytest.raises(capabilities.NoCommonDigest, match="it names blobs by BLAKE3, and mk sends SHA-256"):
        capabilities.choose(blake3_only)
    md5 = _capabilities([], [re_pb2.DigestFunction.MD5])  # an empty CAS list: what the executor takes
    with pytest.raises(capabilities.NoCommonDigest, match="by MD5,"):
        capabilities.choose(md5)


def test_uploads_of_threads_side_by_side_go_together_and_each_returns_once_its_own_are_sent() -> None:
    """While one BatchUpdateBlobs is under way, what other threads bring waits and goes in one
    next call; nobody returns before the call carrying its blobs ended."""
    calls: list[set[Sha256]] = []
    first_under_way, let_go = threading.Event(), threading.Event()

    def send(blobs: Mapping[Sha256, bytes]) -> None:
        calls.append(set(blobs))
        if len(calls) == 1:
            first_under_way.set()
            assert let_go.wait(10)

    together = _Together(send)
    digests = [sha256_bytes(bytes([i])) for i in range(6)]
    returned: list[Sha256] = []

    def upload(digest: Sha256) -> None:
        together.send({digest: b"x"})
        returned.append(digest)

    threads = [threading.Thread(target=upload, args=(d,)) for d in digests]
    threads[0].start()
    assert first_under_way.wait(10)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.2)  # all five wait behind the first call
    assert returned == []
    let_go.set()
    for thread in threads:
        thread.join(10)
    assert calls == [{digests[0]}, set(digests[1:])]
    assert sorted(returned) == sorted(digests)


def test_a_failed_upload_sent_together_fails_every_thread_whose_blobs_it_carried() -> None:
    failing = threading.Event()
    failing.set()
    started, let_go = threading.Event(), threading.Event()

    def send(blobs: Mapping[Sha256, bytes]) -> None:
        if A in blobs:
            started.set()
            assert let_go.wait(10)
            return
        if failing.is_set():
            raise RemoteError("the server refused", "INTERNAL")

    together = _Together(send)
    errors: list[str] = []

    def upload(digest: Sha256) -> None:
        try:
            together.send({digest: b"x"})
        except RemoteError as e:
            errors.append(f"{digest.hash[:4]}: {e}")

    first = threading.Thread(target=upload, args=(A,))
    first.start()
    assert started.wait(10)
    others = [threading.Thread(target=upload, args=(sha256_bytes(bytes([i])),)) for i in range(3)]
    for thread in others:
        thread.start()
    time.sleep(0.2)
    let_go.set()
    for thread in [first, *others]:
        thread.join(10)
    assert len(errors) == 3 and all(e.endswith(": the server refused") for e in errors), errors
    failing.clear()
    together.send({B: b"bb"})  # the next call is sent afresh


class _Cas:
    """A CAS stub whose GetTree answers with the Directories it was given, whatever they are."""

    def __init__(self, directories: list[re_pb2.Directory]) -> None:
        self.directories = directories

    def GetTree(self, request: re_pb2.GetTreeRequest, **_: object) -> Iterator[re_pb2.GetTreeResponse]:
        yield re_pb2.GetTreeResponse(directories=self.directories)


def test_a_tree_read_in_one_call_files_each_directory_under_the_digest_of_its_own_bytes() -> None:
    """A worker reads an input root's Directories with one GetTree: one the server sends otherwise
    than it was stored (here, a file swapped) is filed under no digest the tree names, so it is
    never taken for the Directory asked for (the worker reads that one alone, verified)."""
    builder = DirectoryBuilder()
    builder.add_file("c/a.txt", A, False)
    root, stored = builder.finish()
    sub = next(d for d in stored if d != root)
    swapped = re_pb2.Directory()
    swapped.ParseFromString(stored[sub])
    swapped.files[0].digest.hash = B.hash
    remote = RemoteCas(Endpoint.parse("grpc://127.0.0.1:1"), grpc.insecure_channel("127.0.0.1:1"), 5)
    remote._cas = _Cas([re_pb2.Directory.FromString(stored[root]), swapped])  # type: ignore[assignment]
    found = remote.read_tree(root)
    assert root in found and sub not in found
    assert found[root].SerializeToString(deterministic=True) == stored[root]
