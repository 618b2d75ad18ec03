"""Issue 11, "Trust every byte": what a red-team audit of the caches found, one test (or a few) each.

- 6: a corrupt local blob is never uploaded, nor the result that needs it.
- 8: `mk cache serve` bounds how much an upload may decompress to.
- 10: a trickling remote has a total deadline per request, and Ctrl-C is not held up by it.
- 11: failed uploads are counted and reported (stderr and --json-events).
- 13: damaged or odd cache files and a full disk give a message naming the file, no traceback.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import msgpack
import pytest
import test_remote
import zstandard
from cachedisk import cache_stats
from conftest import MK, Workspace, WorkspaceFactory, mk_env, parse_summary, read_events, without_host_warning
from remote_servers import Faults, Remote, faulty_server, http_request, nginx_server, serve_process, tiny_disk
from test_remote import (
    GAVE_UP,
    SLOW,
    Keys,
    build,
    fresh_outputs,
    outputs,
    reader,
    reference_build,
    writer,
)

from mk.cache.cas import ContentStore, digest_bytes
from mk.cache.fsutil import CacheFileError, write_atomic
from mk.cache.seal import seal
from mk.cache.stat_cache import StatCache

# The shared-cache tests' fixtures (its servers, a signing key), shared rather than copied.
keys, remote, served, examples = test_remote.keys, test_remote.remote, test_remote.served, test_remote.examples

CHAIN = {
    "pkg/BUILD": textwrap.dedent("""
        write_file(name = "gen", out = "gen.txt", content = "generated\\n")
        genrule(name = "use", srcs = [":gen", "in.txt"], outs = ["use.txt"], cmd = "cat $(SRCS) > $@")
    """),
    "pkg/in.txt": "input\n",
}
DISK_FULL = "the disk is full (No space left on device)"
SIZE = "X-Mk-Blob-Size"  # the uncompressed size of an uploaded blob, as mk sends it
KEY = "a" * 64


def blob(data: bytes) -> tuple[str, bytes]:
    return digest_bytes(data), zstandard.ZstdCompressor().compress(data)


@pytest.fixture
def chain(workspace: WorkspaceFactory) -> Workspace:
    return workspace(CHAIN)


# ---- 13: damaged or odd files in the local cache ----------------------------------------------


@pytest.mark.parametrize(("content", "why"), [
    pytest.param(seal(msgpack.packb([1, 2, 3])), "not a map", id="a-list"),
    pytest.param(seal(msgpack.packb("text")), "not a map", id="a-string"),
    pytest.param(seal(b"\xc1 not msgpack"), "not msgpack", id="garbage"),
    pytest.param(msgpack.packb({}), "its checksum does not match", id="no-checksum"),
])
def test_a_damaged_stat_cache_is_named_and_rebuilt(chain: Workspace, content: bytes, why: str) -> None:
    chain.build("//pkg:use")
    [store] = (chain.cache_dir.resolve() / "stat").glob("*.msgpack")
    store.write_bytes(content)
    result = chain.build("//pkg:use")
    assert result.err == f"mk: warning: the stat cache {store} is damaged ({why}); hashing every source again\n"
    assert isinstance(msgpack.unpackb(store.read_bytes()[32:]), dict)  # written afresh
    assert chain.build("//pkg:use").err == ""


def test_a_flipped_bit_in_a_stat_cache_entry_is_caught(chain: Workspace) -> None:
    """A digest changed in place would name other contents for an unchanged file."""
    chain.build("//pkg:use")
    [store] = (chain.cache_dir.resolve() / "stat").glob("*.msgpack")
    data = bytearray(store.read_bytes())
    data[-10] ^= 0x01
    store.write_bytes(bytes(data))
    result = chain.build("//pkg:use")
    assert result.err == (f"mk: warning: the stat cache {store} is damaged (its checksum does not match); "
                          "hashing every source again\n")


def test_a_stat_cache_entry_of_the_wrong_type_is_rehashed(tmp_path: Path) -> None:
    file = tmp_path / "f.txt"
    file.write_bytes(b"x")
    store = tmp_path / "stat.msgpack"
    store.write_bytes(seal(msgpack.packb({str(file): 5})))
    stats = StatCache(store)
    assert stats.digest(file).digest == digest_bytes(b"x")
    assert stats.hashes == 1


def test_stray_files_and_folders_in_the_action_cache_are_named_and_left_alone(chain: Workspace) -> None:
    chain.build("//pkg:use")
    ac = chain.cache_dir.resolve() / "ac"
    shard = sorted(p for p in ac.iterdir() if p.is_dir())[0]
    stray_file, stray_folder = ac / "README", shard / "backup"
    stray_file.write_text("notes\n")
    stray_folder.mkdir()
    (stray_folder / "old").write_bytes(b"\x93not a result")
    warnings = "".join(
        f"mk: warning: ignoring {path}: a stray {kind} in the action cache (mk never writes one there)\n"
        for path, kind in sorted([(stray_file, "file"), (stray_folder, "folder")], key=lambda p: str(p[0]))
    )

    stats = chain.mk("cache", "stats")
    assert (stats.code, stats.err) == (0, warnings)
    assert cache_stats(chain)["ac/"][1] == 2
    verify = chain.mk("cache", "verify")
    assert (verify.code, verify.out, verify.err) == (0, "checked 3 blobs: 0 corrupt, 0 action results dropped\n",
                                                     warnings)
    gc = chain.mk("cache", "gc", "--max-size", "1G")
    assert (gc.code, gc.err) == (0, warnings)
    assert gc.out.startswith("removed 0 files, freed 0 B, ")
    assert stray_file.read_text() == "notes\n" and (stray_folder / "old").is_file()


@pytest.mark.parametrize("command", [["build", "//pkg:use"], ["cache", "gc", "--max-size", "1G"], ["cache", "verify"]])
def test_a_cache_lock_that_is_a_folder_is_named(chain: Workspace, command: list[str]) -> None:
    chain.build("//pkg:use")
    lock = chain.cache_dir.resolve() / "lock"
    lock.unlink()
    lock.mkdir()
    result = chain.mk(*command)
    assert result.code == 2, result
    assert result.err == f"error: cannot use the cache lock {lock}: it is a folder (remove it)\n"


# ---- 13: a full disk ---------------------------------------------------------------------------


def test_a_full_disk_names_the_file_being_written(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk", "64k") as disk:
        target = disk / "cas" / "ab" / "blob"
        with pytest.raises(OSError) as raised:
            write_atomic(target, b"\xff" * (256 << 10))
        assert str(raised.value) == f"cannot write {target}: {DISK_FULL}"
        assert raised.value.errno == errno.ENOSPC  # still an OSError, for callers that handle those
        assert isinstance(raised.value, CacheFileError)  # which the command line shows without a traceback
        assert [p.name for p in target.parent.iterdir()] == []  # the temp file went too


def test_a_build_whose_cache_disk_is_full_says_so(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk", "256k") as disk:
        cache = disk / "cache"
        ws = workspace({"pkg/BUILD": 'genrule(name = "big", outs = ["big.bin"], '
                                     'cmd = "head -c 180000 /dev/urandom > $@")\n'})
        result = ws.mk("build", "//pkg:big", env={"MK_CACHE_DIR": str(cache)})
        assert result.code == 1, result
        blobs = cache / "cas"
        assert f"error: cannot write {blobs}/" in result.err and result.err.endswith(f": {DISK_FULL}\n"), result.err
        assert "Traceback" not in result.err


# ---- 6: uploads send only verified bytes ----------------------------------------------------------

LOG_LINE = "a line that is also a log"
SHARED = {
    "pkg/BUILD": textwrap.dedent(f"""
        write_file(name = "note", out = "note.txt", content = "{LOG_LINE}\\n")
        genrule(name = "talk", outs = ["talk.txt"], cmd = "echo '{LOG_LINE}'; echo out > $@")
    """),
}


def test_a_corrupt_local_blob_is_not_uploaded_nor_its_result(
    workspace: WorkspaceFactory, remote: Remote, keys: Keys, tmp_path: Path
) -> None:
    """:talk's log has the bytes of :note's output, so the store keeps the blob it already has, which
    has rotted since :note was built: that blob must not reach the server, nor :talk's result."""
    ws = workspace(SHARED)
    cache = tmp_path / "A"
    ws.build("//pkg:note", env={"MK_CACHE_DIR": str(cache)})  # no remote yet
    shared = digest_bytes(f"{LOG_LINE}\n".encode())
    rotten = ContentStore(cache.resolve()).path(shared)
    rotten.write_bytes(zstandard.ZstdCompressor().compress(b"rotten\n"))

    _, err = build(ws, cache, writer(remote.url, keys), "//pkg:talk")
    assert ws.read("mk-out/pkg/talk.txt") == "out\n"
    warning = (f"mk: warning: remote cache {remote.url}: local blob {shared} is corrupt: removed it, and uploaded "
               "neither it nor the results that need it\n")
    assert err.count(warning) == 1, err
    # 17 B: "out\n" as one zstd frame with its content checksum, as the store sends every blob.
    assert (f"uploaded 1 blobs (17 B) and 0 results; failed to upload 1 blobs and 1 results "
            f"(first error: local blob {shared[:16]}… is corrupt)\n") in err
    assert remote.names("cas") == {digest_bytes(b"out\n")}
    assert remote.names("ac") == set()
    assert not rotten.exists()


def test_a_blob_over_64_mib_is_uploaded_with_its_size(
    workspace: WorkspaceFactory, served: Remote, keys: Keys, tmp_path: Path
) -> None:
    """mk declares each blob's size, so `mk cache serve` takes blobs beyond what it allows an
    upload that does not say (64 MiB)."""
    ws = workspace({"pkg/BUILD": 'genrule(name = "zeros", outs = ["zeros.bin"], '
                                 'cmd = "head -c 70000000 /dev/zero > $@")\n'})
    _, err = build(ws, tmp_path / "A", writer(served.url, keys), "//pkg:zeros")
    assert "warning" not in without_host_warning(err), err
    assert digest_bytes(bytes(70_000_000)) in served.names("cas")
    assert len(served.names("ac")) == 1


# ---- 11: failed uploads are reported ---------------------------------------------------------------

TALK = {"pkg/BUILD": 'genrule(name = "talk", outs = ["talk.txt"], cmd = "echo built; echo out > $@")\n'}


def test_failed_uploads_are_counted_with_the_first_error(
    workspace: WorkspaceFactory, keys: Keys, tmp_path: Path
) -> None:
    """nginx refuses every PUT with a 500: the build succeeds, and says what was not uploaded."""
    ws = workspace(TALK)
    events = tmp_path / "events.jsonl"
    with nginx_server(tmp_path / "nginx", put_status=500) as server:
        _, err = build(ws, tmp_path / "A", writer(server.url, keys), "//pkg:talk", events=events)
    assert ws.read("mk-out/pkg/talk.txt") == "out\n"
    first = [f"PUT /cas/{digest_bytes(data)[:16]}…: HTTP 500" for data in (b"out\n", b"built\n")]
    line = (f"mk: remote cache {server.url}: 0 hits, 1 misses, 0 rejected; downloaded 0 blobs (0 B); "
            f"uploaded 0 blobs (0 B) and 0 results; failed to upload 2 blobs and 1 results (first error: {{}})\n")
    assert any(line.format(error) in err for error in first), err  # either blob may fail first
    assert err.count(GAVE_UP) == 1, err
    [event] = [e for e in read_events(events) if "event" in e]
    assert event in [{"event": "remote_upload_failed", "url": server.url, "blobs": 2, "results": 1,
                      "first_error": error} for error in first]
    assert server.names("cas") == set() and server.names("ac") == set()


# ---- 10: a remote that trickles -------------------------------------------------------------------


def test_a_trickling_remote_is_given_up_at_the_deadline(examples: Workspace, keys: Keys, tmp_path: Path) -> None:
    """Every answer comes one byte each half second, so no read ever times out; the build goes on
    without the remote once a request's deadline passes (twice MK_REMOTE_TIMEOUT for an answer
    this small)."""
    expected = reference_build(examples, tmp_path)
    with faulty_server(tmp_path / "store") as (server, faults):
        build(examples, tmp_path / "A", writer(server.url, keys))
        fresh_outputs(examples)
        faults.mode = "trickle"
        started = time.monotonic()
        out, err = build(examples, tmp_path / "B", reader(server.url, keys, MK_REMOTE_TIMEOUT="1"))
        took = time.monotonic() - started
    assert outputs(examples) == expected
    assert parse_summary(out).executed == test_remote.ACTIONS
    assert err.count(GAVE_UP) == 1, err
    assert f"…: too slow (not done within 2.0 s); {GAVE_UP}" in err, err
    assert took < 30, f"{took:.0f} s"  # unbounded, one result takes minutes


def test_uploads_to_a_trickling_remote_end_at_the_deadline(
    workspace: WorkspaceFactory, keys: Keys, tmp_path: Path
) -> None:
    ws = workspace(TALK)
    with faulty_server(tmp_path / "store") as (server, faults):
        faults.mode = "trickle-put"
        started = time.monotonic()
        _, err = build(ws, tmp_path / "A", writer(server.url, keys, MK_REMOTE_TIMEOUT="1"), "//pkg:talk")
        took = time.monotonic() - started
    assert ws.read("mk-out/pkg/talk.txt") == "out\n"
    assert err.count(GAVE_UP) == 1, err
    first = [f"PUT /cas/{digest_bytes(data)[:16]}…: too slow (not done within 2.0 s)"
             for data in (b"out\n", b"built\n")]
    assert any(f"failed to upload 2 blobs and 1 results (first error: {error})\n" in err for error in first), err
    assert took < 20, f"{took:.0f} s"  # unbounded, a PUT's answer takes 22 s


def interrupt_when(proc: subprocess.Popen[str], faults: Faults, request: str) -> tuple[str, str, float]:
    """Ctrl-C for `proc` (SIGINT to its process group, as a terminal sends it) once the server has
    been sent `request` (e.g. "PUT /cas/"); returns its stdout, stderr and how long it then took."""
    try:
        deadline = time.monotonic() + 30
        while not any(r.startswith(request) for r in list(faults.requests)):
            assert proc.poll() is None and time.monotonic() < deadline, f"no {request} request was made"
            time.sleep(0.02)
        time.sleep(0.3)  # well into the trickle
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        return out, err, time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def start_build(ws: Workspace, cache: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([MK, "build", *args], cwd=ws.root, env=mk_env(cache, env), text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def test_ctrl_c_is_not_held_up_by_a_trickling_lookup(examples: Workspace, keys: Keys, tmp_path: Path) -> None:
    with faulty_server(tmp_path / "store") as (server, faults):
        build(examples, tmp_path / "A", writer(server.url, keys))
        fresh_outputs(examples)
        faults.requests.clear()
        faults.mode = "trickle"
        proc = start_build(examples, tmp_path / "B", reader(server.url, keys, MK_REMOTE_TIMEOUT="60"), "//examples")
        _, err, took = interrupt_when(proc, faults, "GET /ac/")
    assert proc.returncode == 130, err
    assert took < 3, f"Ctrl-C took {took:.1f} s"  # a second, and then some for a loaded machine
    assert "mk: interrupted; nothing partial was kept" in err
    assert "Traceback" not in err and "warning" not in err, err


def test_ctrl_c_is_not_held_up_by_a_trickling_upload(workspace: WorkspaceFactory, keys: Keys, tmp_path: Path) -> None:
    ws = workspace(SLOW)
    with faulty_server(tmp_path / "store") as (server, faults):
        faults.mode = "trickle-put"
        env = writer(server.url, keys, MK_REMOTE_TIMEOUT="60")
        proc = start_build(ws, tmp_path / "A", env, "//pkg:last", "-j", "1")
        _, err, took = interrupt_when(proc, faults, "PUT /")
    assert proc.returncode == 130, err
    assert took < 3, f"Ctrl-C took {took:.1f} s"
    assert "mk: interrupted; nothing partial was kept" in err
    assert "Traceback" not in err and "warning" not in err, err


# ---- 8: the server bounds decompression ----------------------------------------------------------


def zstd_bomb(frames: int) -> bytes:
    """`frames` zstd frames of 64 MiB of zeros, about 2 KiB each: 256 of them are a 512 KiB body
    that decompresses to 16 GiB (about a minute of one core to hash)."""
    return zstandard.ZstdCompressor(level=19).compress(bytes(64 << 20)) * frames


@pytest.mark.parametrize(("declared", "answer"), [
    pytest.param(None, (413, b"the blob decompresses to more than 67108864 bytes: send its size in X-Mk-Blob-Size\n"),
                 id="undeclared"),
    pytest.param("6", (400, b"the body is not the zstd-compressed blob named in the URL\n"), id="declared-small"),
    pytest.param(str(1 << 40), (413, b"a blob of 1099511627776 bytes is larger than this server takes "
                                     b"(4294967296)\n"), id="declared-huge"),
])
def test_serve_refuses_a_zstd_bomb_at_once(served: Remote, declared: str | None, answer: tuple[int, bytes]) -> None:
    bomb = zstd_bomb(256)
    assert len(bomb) < 600 << 10
    started = time.monotonic()
    got = http_request(served.url, "PUT", f"/cas/{digest_bytes(b'hello')}", bomb, {SIZE: declared} if declared else {})
    took = time.monotonic() - started
    assert got == answer
    assert took < 5, f"the server spent {took:.1f} s on a 512 KiB upload"  # unbounded, it spends about a minute
    assert served.names("cas") == set()
    assert http_request(served.url, "GET", f"/cas/{digest_bytes(b'hello')}") == (404, b"")


def test_serve_takes_a_blob_only_at_its_declared_size(served: Remote) -> None:
    data = os.urandom(300_000)
    digest, compressed = blob(data)
    not_it = (400, b"the body is not the zstd-compressed blob named in the URL\n")
    assert http_request(served.url, "PUT", f"/cas/{digest}", compressed, {SIZE: str(len(data) + 1)}) == not_it
    assert http_request(served.url, "PUT", f"/cas/{digest}", compressed, {SIZE: str(len(data) - 1)}) == not_it
    assert http_request(served.url, "PUT", f"/cas/{digest}", compressed, {SIZE: "many"}) == (
        400, b"X-Mk-Blob-Size must be a number of bytes\n")
    assert served.names("cas") == set()
    assert http_request(served.url, "PUT", f"/cas/{digest}", compressed, {SIZE: str(len(data))}) == (201, b"")
    assert http_request(served.url, "GET", f"/cas/{digest}") == (200, compressed)


# ---- 13: mk cache serve on a full disk -------------------------------------------------------------


def test_serve_on_a_full_disk_answers_507(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk", "256k") as disk, serve_process(disk) as server:
        data = os.urandom(400_000)
        digest, compressed = blob(data)
        full = (507, b"the cache server's disk is full\n")
        assert http_request(server.url, "PUT", f"/cas/{digest}", compressed, {SIZE: str(len(data))}) == full
        assert http_request(server.url, "PUT", f"/ac/{KEY}", os.urandom(400_000)) == full
        assert http_request(server.url, "GET", f"/cas/{digest}") == (404, b"")
        assert [p for p in disk.rglob("*") if p.is_file()] == []  # no temp file left to fill it
        small, compressed_small = blob(b"small\n")  # the server goes on once there is room again
        assert http_request(server.url, "PUT", f"/cas/{small}", compressed_small, {SIZE: "6"}) == (201, b"")
        assert http_request(server.url, "GET", f"/cas/{small}") == (200, compressed_small)
    assert server.log is not None and "Traceback" not in server.log.read_text()


def test_stray_files_and_folders_in_the_content_store_are_named_and_left_alone(chain: Workspace) -> None:
    chain.build("//pkg:use")
    cas = chain.cache_dir.resolve() / "cas"
    shard = sorted(p for p in cas.iterdir() if p.is_dir())[0]
    stray_folder, stray_file = shard / "backup", shard / "notes.txt"
    stray_folder.mkdir()
    (stray_folder / "old").write_bytes(b"kept")
    stray_file.write_text("notes\n")
    warnings = "".join(
        f"mk: warning: ignoring {path}: a stray {kind} in the content store (mk never writes one there)\n"
        for path, kind in sorted([(stray_file, "file"), (stray_folder, "folder")], key=lambda p: str(p[0]))
    )
    stats = chain.mk("cache", "stats")
    assert (stats.code, stats.err) == (0, warnings)
    assert cache_stats(chain)["cas/"][1] == 3
    verify = chain.mk("cache", "verify")
    assert (verify.code, verify.out, verify.err) == (0, "checked 3 blobs: 0 corrupt, 0 action results dropped\n",
                                                     warnings)
    gc = chain.mk("cache", "gc", "--max-size", "1G")
    assert (gc.code, gc.err) == (0, warnings)
    assert stray_file.read_text() == "notes\n" and (stray_folder / "old").read_bytes() == b"kept"
