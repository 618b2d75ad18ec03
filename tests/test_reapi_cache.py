"""A REAPI server's ActionCache and CAS as mk's shared cache (`remote_cache = "grpc://..."`),
against a real BuildGrid (started by the fixtures, as for remote execution), with the remote
cache's own examples workspace (see test_remote).

Each test gives its workspace a `source_date_epoch` of its own, so that its action keys are its
own on the one server the module shares.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import blake3
import grpc
import pytest
from buildgrid_fixtures import BuildGrid, buildgrid_server, free_port
from conftest import Workspace, WorkspaceFactory, assert_cache_is_sound, mk_env, parse_summary, read_events
from test_remote import (
    ACTIONS,
    EXAMPLES,
    GAVE_UP,
    SLOW,
    UNTRUSTED,
    Keys,
    blobs,
    build,
    build_killing_the_server,
    fresh_outputs,
    outputs,
    reader,
    writer,
)

from mk.cache.reapi.cache import SIGNED_RESULT, blob_digest, result_digest
from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from mk.cache.signing import write_key_pair

IMAGE = "examples/initramfs.cpio.zst"
_epochs = itertools.count(1_000_000)


@pytest.fixture(scope="module")
def grid() -> Iterator[BuildGrid]:
    with buildgrid_server() as server:
        yield server


@pytest.fixture
def examples(workspace: WorkspaceFactory) -> Workspace:
    return workspace(EXAMPLES, toml=f"source_date_epoch = {next(_epochs)}\n")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    key_file, _, public = write_key_pair(tmp_path / "ci")
    return Keys(key_file, public.line())


class Server:
    """The test's own gRPC client of the server, to look at what mk stored and to tamper with it."""

    def __init__(self, url: str) -> None:
        self.channel = grpc.insecure_channel(url.removeprefix("grpc://"))
        self.ac = re_grpc.ActionCacheStub(self.channel)
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)

    def entry(self, digest: re_pb2.Digest) -> re_pb2.ActionResult:
        found: re_pb2.ActionResult = self.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=digest))
        return found

    def set_entry(self, digest: re_pb2.Digest, entry: re_pb2.ActionResult) -> None:
        self.ac.UpdateActionResult(re_pb2.UpdateActionResultRequest(action_digest=digest, action_result=entry))

    def has(self, data: bytes) -> bool:
        digest = re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        answer = self.cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[digest]))
        return not answer.missing_blob_digests


@pytest.fixture
def server(grid: BuildGrid) -> Iterator[Server]:
    client = Server(grid.url)
    yield client
    client.channel.close()


def blob_entry(sha256: str, size: int) -> re_pb2.ActionResult:
    return re_pb2.ActionResult(output_files=[re_pb2.OutputFile(
        path="blob", digest=re_pb2.Digest(hash=sha256, size_bytes=size))])


def test_a_second_machine_gets_everything_from_a_reapi_cache(
    examples: Workspace, grid: BuildGrid, server: Server, keys: Keys, tmp_path: Path
) -> None:
    out, err = build(examples, tmp_path / "A", writer(grid.url, keys))
    a = parse_summary(out)
    assert a.executed == a.actions == ACTIONS
    assert f"and {ACTIONS} results" in err, err
    built = outputs(examples)
    fresh_outputs(examples)
    # Stored as any REAPI tool reads them: blobs as they are, by SHA-256; results signed.
    assert all(server.has(data) for data in built.values())
    image = blake3.blake3(built[IMAGE]).hexdigest()
    (entry,) = server.entry(blob_digest(image)).output_files
    assert (entry.path, entry.digest.hash) == ("blob", hashlib.sha256(built[IMAGE]).hexdigest())

    out, err = build(examples, tmp_path / "B", reader(grid.url, keys))
    b = parse_summary(out)
    assert (b.executed, b.remote, b.local) == (0, b.actions, 0), out
    assert outputs(examples) == built  # identical bytes
    # Without the bytes: only the requested outputs came down, no intermediate tree.
    assert blobs(tmp_path / "B") == {blake3.blake3(data).hexdigest() for data in built.values()}
    assert f"downloaded {len(built)} blobs" in err and "uploaded 0 blobs" in err


def test_results_in_a_reapi_cache_are_used_only_when_a_trusted_key_signed_them(
    examples: Workspace, grid: BuildGrid, server: Server, keys: Keys, tmp_path: Path
) -> None:
    events = tmp_path / "a.jsonl"
    build(examples, tmp_path / "A", writer(grid.url, keys), events=events)
    built = outputs(examples)
    fresh_outputs(examples)
    # Another key's machine trusts only its own key: none of A's results is used.
    _, _, other = write_key_pair(tmp_path / "other")
    out, err = build(examples, tmp_path / "B", reader(grid.url, Keys(keys.secret, other.line())))
    assert parse_summary(out).executed == ACTIONS and UNTRUSTED in err, err
    assert outputs(examples) == built
    fresh_outputs(examples)
    # A result entry that carries no signed envelope (one any REAPI client may write) is no result.
    keys_of_a = {str(e["key"]) for e in read_events(events)}
    assert len(keys_of_a) == ACTIONS
    for key in keys_of_a:
        metadata = server.entry(result_digest(key)).execution_metadata.auxiliary_metadata
        assert [m.type_url for m in metadata] == [SIGNED_RESULT]
        server.set_entry(result_digest(key), re_pb2.ActionResult(exit_code=0))
    out, err = build(examples, tmp_path / "C", reader(grid.url, keys))
    assert (parse_summary(out).executed, parse_summary(out).remote) == (ACTIONS, 0), out
    assert outputs(examples) == built


@pytest.mark.parametrize("damage", ["another blob", "a blob it lacks"])
def test_a_blob_entry_that_leads_elsewhere_is_never_used(
    examples: Workspace, grid: BuildGrid, server: Server, keys: Keys, tmp_path: Path, damage: str
) -> None:
    build(examples, tmp_path / "A", writer(grid.url, keys))
    built = outputs(examples)
    fresh_outputs(examples)
    image = blake3.blake3(built[IMAGE]).hexdigest()
    if damage == "another blob":
        other = next(data for path, data in built.items() if path != IMAGE)
        server.set_entry(blob_digest(image), blob_entry(hashlib.sha256(other).hexdigest(), len(other)))
    else:
        server.set_entry(blob_digest(image), blob_entry(hashlib.sha256(b"never stored").hexdigest(), 12))

    out, err = build(examples, tmp_path / "B", reader(grid.url, keys))
    assert outputs(examples) == built
    assert ("has the wrong bytes" if damage == "another blob" else "is missing") in err, err
    summary = parse_summary(out)
    assert (summary.executed, summary.remote) == (ACTIONS, 0), out  # the retry used no remote result


def test_an_unreachable_reapi_cache_costs_one_warning(examples: Workspace, keys: Keys, tmp_path: Path) -> None:
    url = f"grpc://127.0.0.1:{free_port()}"  # nothing listens there
    reference = tmp_path / "reference"
    build(examples, reference, {})
    built = outputs(examples)
    fresh_outputs(examples)
    out, err = build(examples, tmp_path / "A", writer(url, keys))
    assert parse_summary(out).executed == ACTIONS
    assert outputs(examples) == built
    assert f"cannot reach the remote cache {url}" in err and GAVE_UP in err, err
    assert err.count(GAVE_UP) == 1, err


@pytest.mark.parametrize("url, said", [
    ("grpc://127.0.0.1", "names no port"),
    ("grpc://127.0.0.1:1/path", "grpc://host:port or grpcs://host:port"),
])
def test_a_bad_reapi_cache_url_is_a_usage_error(examples: Workspace, url: str, said: str) -> None:
    result = examples.mk("build", "//examples", env={"MK_REMOTE_CACHE": url})
    assert result.code == 2, result
    assert "MK_REMOTE_CACHE" in result.err and said in result.err, result.err


def test_a_reapi_cache_killed_mid_build_costs_one_warning_and_nothing_else(
    workspace: WorkspaceFactory, grid: BuildGrid, server: Server, keys: Keys, tmp_path: Path
) -> None:
    ws = workspace(SLOW, toml=f"source_date_epoch = {next(_epochs)}\n")
    env = mk_env(tmp_path / "A", writer(grid.url, keys))
    try:
        code, out, err = build_killing_the_server(ws, env, lambda: server.has(b"first\n"), grid.stop_server)
    finally:
        grid.start_server()  # for the tests after this one
    assert code == 0, err
    assert parse_summary(out).executed == 3
    assert ws.read("mk-out/pkg/last.txt") == "first\nslow\nlast\n"
    assert err.count(GAVE_UP) == 1, err
    assert_cache_is_sound(tmp_path / "A", logs=True)


def test_a_reapi_cache_that_takes_no_results_stops_the_uploads_only(
    examples: Workspace, grid: BuildGrid, keys: Keys, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    build(examples, reference, {})
    built = outputs(examples)
    fresh_outputs(examples)
    grid.stop_server()
    grid.allow_updates = False  # BuildGrid answers UpdateActionResult with UNIMPLEMENTED
    grid.configure()
    grid.start_server()
    try:
        out, err = build(examples, tmp_path / "A", writer(grid.url, keys))
    finally:
        grid.stop_server()
        grid.allow_updates = True
        grid.configure()
        grid.start_server()
    assert parse_summary(out).executed == ACTIONS
    assert outputs(examples) == built
    assert err.count("refuses uploads") == 1 and "UNIMPLEMENTED" in err, err
    assert GAVE_UP not in err, err  # reading would have gone on
    assert "uploaded 0 blobs (0 B) and 0 results; failed to upload" in err, err
