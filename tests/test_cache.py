"""The local cache: corruption, maintenance (stats, gc, verify), crashes, interrupts and concurrency.

Plus unit tests of the content store (CAS) and the stat cache.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import msgpack
import pytest
import zstandard
from cachedisk import cache_stats, du, entries_under, files_under, last_use, on_disk
from conftest import (
    MK,
    Workspace,
    WorkspaceFactory,
    assert_cache_is_sound,
    executed_labels,
    mk_env,
    parse_summary,
    read_events,
)

from mk.cache.action_cache import ActionResult
from mk.cache.cas import ContentStore, CorruptBlobError, MissingBlobError, digest_bytes
from mk.cache.stat_cache import FileDigest, StatCache
from mk.cache.units import human_size

EXIT_BUILD_FAILED = 1
EXIT_INTERRUPTED = 130

CHAIN = {
    "pkg/BUILD": textwrap.dedent("""
        write_file(name = "gen", out = "gen.txt", content = "generated\\n")
        genrule(name = "use", srcs = [":gen", "in.txt"], outs = ["use.txt"], cmd = "cat $(SRCS) > $@")
    """),
    "pkg/in.txt": "input\n",
}
GEN = b"generated\n"
USE = b"generated\ninput\n"


def blake(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def blob_path(cache_dir: Path, data: bytes) -> Path:
    digest = blake(data)
    return cache_dir / "cas" / digest[:2] / digest


def cache_entries(cache_dir: Path, kind: str) -> dict[str, Path]:
    """Blobs ("cas") or action results ("ac") on disk: name -> path (temp files left out)."""
    root = cache_dir / kind
    if not root.is_dir():
        return {}
    return {
        p.name: p for shard in root.iterdir() if shard.is_dir()
        for p in shard.iterdir() if not p.name.startswith(".tmp-")
    }


def scratch_entries(cache_dir: Path) -> list[str]:
    tmp = cache_dir / "tmp"
    return sorted(os.listdir(tmp)) if tmp.is_dir() else []


@pytest.fixture
def chain(workspace: WorkspaceFactory) -> Workspace:
    return workspace(CHAIN)


# ---- corrupt blobs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"this is not zstd at all", id="not-zstd"),
        pytest.param(zstandard.ZstdCompressor().compress(b"generated\nINPUT\n"), id="zstd-of-other-bytes"),
        pytest.param(b"", id="empty"),
    ],
)
def test_corrupt_output_blob_is_dropped_and_rebuilt(chain: Workspace, tmp_path: Path, garbage: bytes) -> None:
    chain.build("//pkg:use")
    blob = blob_path(chain.cache_dir, USE)
    assert blob.is_file()
    blob.write_bytes(garbage)
    (chain.root / "mk-out/pkg/use.txt").unlink()

    events = tmp_path / "e.jsonl"
    result = chain.build("//pkg:use", events=events)
    assert f"mk: warning: blob {blake(USE)} in {blob} is corrupt; it was removed and will be rebuilt" in result.err
    assert (chain.root / "mk-out/pkg/use.txt").read_bytes() == USE
    assert executed_labels(events) == ["//pkg:use"]  # :gen's result was fine and stays cached
    assert ContentStore(chain.cache_dir).read_bytes(blake(USE)) == USE  # the blob was rebuilt
    assert_cache_is_sound(chain.cache_dir)


def test_corrupt_input_blob_is_rebuilt_before_the_action_uses_it(chain: Workspace, tmp_path: Path) -> None:
    chain.build("//pkg:use")
    blob_path(chain.cache_dir, GEN).write_bytes(b"\x28\xb5\x2f\xfd garbage after a zstd magic number")
    chain.write("pkg/in.txt", "other input\n")  # :use must run, reading :gen's blob

    events = tmp_path / "e.jsonl"
    result = chain.build("//pkg:use", events=events)
    assert f"mk: warning: blob {blake(GEN)} " in result.err
    assert chain.read("mk-out/pkg/use.txt") == "generated\nother input\n"
    assert executed_labels(events) == ["//pkg:gen", "//pkg:use"]
    assert_cache_is_sound(chain.cache_dir)


def test_malformed_action_result_is_a_miss(chain: Workspace, tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    chain.build("//pkg:use", events=events)
    use_key = next(str(e["key"]) for e in read_events(events) if e["label"] == "//pkg:use")
    entry = chain.cache_dir / "ac" / use_key[:2] / use_key
    entry.write_bytes(b"\x93not a result")
    chain.build("//pkg:use", events=events)
    assert executed_labels(events) == ["//pkg:use"]
    assert ActionResult.decode(entry.read_bytes()).outputs[0].digest == blake(USE)


# ---- mk cache verify | stats | gc ---------------------------------------------------------------


def test_cache_verify_detects_and_drops_a_corrupt_blob(chain: Workspace, tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    chain.build("//pkg:use", events=events)
    keys = {e["label"]: e["key"] for e in read_events(events)}
    blobs = len(cache_entries(chain.cache_dir, "cas"))

    clean = chain.mk("cache", "verify")
    assert (clean.code, clean.out) == (0, f"checked {blobs} blobs: 0 corrupt, 0 action results dropped\n")

    blob_path(chain.cache_dir, GEN).write_bytes(b"rotten")
    result = chain.mk("cache", "verify")
    assert result.code == EXIT_BUILD_FAILED, result
    assert result.out == (
        f"corrupt blob removed: {blake(GEN)}\n"
        f"action result removed (blob missing): {keys['//pkg:gen']}\n"
        f"checked {blobs} blobs: 1 corrupt, 1 action results dropped\n"
    )
    assert not blob_path(chain.cache_dir, GEN).exists()
    assert keys["//pkg:gen"] not in cache_entries(chain.cache_dir, "ac")
    assert keys["//pkg:use"] in cache_entries(chain.cache_dir, "ac")

    again = chain.mk("cache", "verify")
    assert (again.code, again.out) == (0, f"checked {blobs - 1} blobs: 0 corrupt, 0 action results dropped\n")

    # The next build makes the lost blob again; what depends on it is still cached (same bytes).
    (chain.root / "mk-out").rename(tmp_path / "old-mk-out")
    chain.build("//pkg:use", events=events)
    assert executed_labels(events) == ["//pkg:gen"]
    assert (chain.root / "mk-out/pkg/use.txt").read_bytes() == USE
    assert_cache_is_sound(chain.cache_dir)


def test_cache_stats(chain: Workspace) -> None:
    empty = cache_stats(chain)
    assert empty.pop("total")[:2] == (human_size(du(chain.cache_dir)), 0)  # the folder itself
    assert {part: (size, files) for part, (size, files, _) in empty.items()} == dict.fromkeys(empty, ("0 B", 0))
    assert list(empty)[:2] == ["cas/", "ac/"]

    chain.build("//pkg:use")
    blobs = cache_entries(chain.cache_dir, "cas")
    results = cache_entries(chain.cache_dir, "ac")
    assert len(results) == 2
    assert len(blobs) == 3  # gen.txt, use.txt and the (shared, empty) log
    stats = cache_stats(chain)
    assert stats["cas/"] == (human_size(du(chain.cache_dir / "cas")), 3,
                             "blobs: outputs, logs and downloads, compressed [evictable]")
    assert stats["ac/"] == (human_size(du(chain.cache_dir / "ac")), 2, "action results [evictable]")
    assert stats["total"][:2] == (human_size(du(chain.cache_dir)), len(entries_under(chain.cache_dir)))


def test_cache_commands_ignore_leftover_temp_files(chain: Workspace) -> None:
    chain.build("//pkg:use")
    # What a writer killed mid-write leaves: temp files beside (or above) the shards.
    (chain.cache_dir / "cas" / ".tmp-killed").write_bytes(b"partial")
    shard = blob_path(chain.cache_dir, USE).parent
    (shard / ".tmp-killed").write_bytes(b"partial")
    for command in (["cache", "stats"], ["cache", "verify"], ["cache", "gc", "--max-size", "1G"]):
        result = chain.mk(*command)
        assert result.code == 0, result
        assert "Traceback" not in result.err
    assert cache_stats(chain)["cas/"][1] == 3


def test_cache_gc_evicts_least_recently_used_first(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    content_a = "".join(blake(f"a{i}".encode()) for i in range(40)) + "\n"
    content_b = "".join(blake(f"b{i}".encode()) for i in range(40)) + "\n"
    ws = workspace({
        "a/BUILD": f'write_file(name = "a", out = "a.txt", content = "{content_a.strip()}\\n")\n',
        "b/BUILD": f'write_file(name = "b", out = "b.txt", content = "{content_b.strip()}\\n")\n',
    })
    events = tmp_path / "e.jsonl"
    ws.build("//a", events=events)
    key_a = str(read_events(events)[0]["key"])
    ws.build("//b", events=events)
    key_b = str(read_events(events)[0]["key"])
    time.sleep(0.1)
    hit = time.time() - 0.05  # (file times come from a coarser clock)
    ws.build("//a", events=events)  # a hit: marks a's result and blob as recently used
    assert executed_labels(events) == []

    keep = [ws.cache_dir / "ac" / key_a[:2] / key_a, blob_path(ws.cache_dir, content_a.encode())]
    b_files = [ws.cache_dir / "ac" / key_b[:2] / key_b, blob_path(ws.cache_dir, content_b.encode())]
    assert all(p.is_file() for p in keep + b_files)
    when = last_use(ws.cache_dir)
    assert all(when[p] >= hit for p in keep) and all(when[p] < hit for p in b_files)
    limit = du(ws.cache_dir) - sum(on_disk(p) for p in b_files)

    result = ws.mk("cache", "gc", "--max-size", str(limit))
    assert result.code == 0, result
    evicted = [p for p in when if not p.exists()]
    assert result.out.startswith(f"removed {len(evicted)} files, freed "), result.out
    assert all(p.is_file() for p in keep)
    assert max(when[p] for p in evicted) <= min(when[p] for p in when if p.exists())
    assert du(ws.cache_dir) <= limit
    assert_cache_is_sound(ws.cache_dir)

    ws.build("//a", events=events)
    assert executed_labels(events) == []


def test_cache_gc_within_budget_removes_nothing(chain: Workspace) -> None:
    chain.build("//pkg:use")
    before = set(cache_entries(chain.cache_dir, "cas")) | set(cache_entries(chain.cache_dir, "ac"))
    result = chain.mk("cache", "gc", "--max-size", "1G")
    assert result.code == 0, result
    assert result.out.startswith("removed 0 files, freed 0 B, "), result.out
    assert set(cache_entries(chain.cache_dir, "cas")) | set(cache_entries(chain.cache_dir, "ac")) == before


def test_cache_gc_to_zero_empties_the_cache(chain: Workspace, tmp_path: Path) -> None:
    chain.build("//pkg:use")
    result = chain.mk("cache", "gc", "--max-size", "0")
    assert result.code == 0, result
    # What is left is the folders and mk's small state (the lock, the graphs' key).
    assert result.out.endswith(f", {human_size(du(chain.cache_dir))} left\n"), result.out
    assert cache_entries(chain.cache_dir, "cas") == {} and cache_entries(chain.cache_dir, "ac") == {}
    assert [str(p.relative_to(chain.cache_dir)) for p in files_under(chain.cache_dir)] == ["graphs/key", "lock"]
    events = tmp_path / "e.jsonl"
    chain.build("//pkg:use", events=events)
    assert executed_labels(events) == ["//pkg:gen", "//pkg:use"]


def test_cache_gc_rejects_a_bad_size(chain: Workspace) -> None:
    result = chain.mk("cache", "gc", "--max-size", "lots")
    assert result.code == 2
    assert result.err.endswith("\nError: Invalid value for --max-size: not a size: 'lots' (try 500M or 2G)\n")


# ---- crashes, interrupts and concurrent builds --------------------------------------------------


def action_pids(cache_dir: Path) -> list[int]:
    """Processes running inside one of mk's scratch directories (that is, actions)."""
    tmp = str((cache_dir / "tmp").resolve()) + "/"
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd.startswith(tmp):
                pids.append(int(entry))
    return pids


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def start_mk(ws: Workspace, *args: str) -> subprocess.Popen[str]:
    """`mk` in its own process group, as a shell would start it."""
    return subprocess.Popen(
        [MK, *args], cwd=ws.root, env=mk_env(ws.cache_dir), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def kill_actions(cache_dir: Path) -> None:
    for pid in action_pids(cache_dir):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


SLOW = {
    "pkg/BUILD": textwrap.dedent("""
        write_file(name = "gen", out = "gen.txt", content = "generated\\n")
        genrule(
            name = "slow",
            srcs = [":gen"],
            outs = ["slow.txt"],
            cmd = "echo started > $@.partial; sleep SECONDS; cat $< > $@; echo done >> $@",
        )
    """),
}


def slow_workspace(workspace: WorkspaceFactory, seconds: float, name: str = "ws") -> Workspace:
    return workspace({"pkg/BUILD": SLOW["pkg/BUILD"].replace("SECONDS", str(seconds))}, name=name)


def test_sigkill_mid_action_leaves_a_sound_cache(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    ws = slow_workspace(workspace, 2)
    events = tmp_path / "killed.jsonl"
    proc = start_mk(ws, "build", "//pkg:slow", "--json-events", str(events))
    try:
        wait_for(lambda: action_pids(ws.cache_dir))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        # The action ran in its own session, so it outlived mk: stop it too.
        kill_actions(ws.cache_dir)
    assert proc.returncode == -signal.SIGKILL

    finished = read_events(events)
    assert [e["label"] for e in finished] == ["//pkg:gen"]
    # Only the finished action has a result; nothing points at a missing or partial blob.
    assert sorted(cache_entries(ws.cache_dir, "ac")) == [finished[0]["key"]]
    assert_cache_is_sound(ws.cache_dir)
    assert scratch_entries(ws.cache_dir), "expected the killed build's scratch directory"
    assert not (ws.root / "mk-out/pkg/slow.txt").exists()

    result = ws.build("//pkg:slow", events=events)
    assert executed_labels(events) == ["//pkg:slow"]
    assert parse_summary(result.out).cached == 1
    assert ws.read("mk-out/pkg/slow.txt") == "generated\ndone\n"
    assert scratch_entries(ws.cache_dir) == [], "the dead build's scratch must be swept"
    assert_cache_is_sound(ws.cache_dir)
    assert ws.mk("cache", "verify").code == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_mid_action_exits_130_and_cleans_up(
    workspace: WorkspaceFactory, tmp_path: Path, signum: signal.Signals
) -> None:
    ws = slow_workspace(workspace, 30)
    events = tmp_path / "e.jsonl"
    proc = start_mk(ws, "build", "//pkg:slow", "--json-events", str(events))
    try:
        wait_for(lambda: action_pids(ws.cache_dir))
        started = time.monotonic()
        os.killpg(proc.pid, signum)  # what the terminal does on Ctrl-C
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        kill_actions(ws.cache_dir)
    assert proc.returncode == EXIT_INTERRUPTED, (out, err)
    assert time.monotonic() - started < 10, "mk must not wait for the 30 s action"
    assert "interrupted" in err
    assert "Traceback" not in err
    assert action_pids(ws.cache_dir) == [], "the running action must be killed"
    assert scratch_entries(ws.cache_dir) == [], "scratch directories must be removed"
    assert [e["label"] for e in read_events(events)] == ["//pkg:gen"]
    assert len(cache_entries(ws.cache_dir, "ac")) == 1
    assert_cache_is_sound(ws.cache_dir)


CONCURRENT = {
    "pkg/BUILD": textwrap.dedent("""
        write_file(name = "gen", out = "gen.txt", content = "generated\\n")
        [genrule(
            name = "slow%d" % i,
            srcs = [":gen"],
            outs = ["slow%d.txt" % i],
            cmd = "sleep 1.5; cat $< > $@; echo %d >> $@" % i,
        ) for i in range(3)]
        genrule(name = "all", srcs = [":slow0", ":slow1", ":slow2"], outs = ["all.txt"], cmd = "cat $(SRCS) > $@")
    """),
}


@pytest.mark.parametrize("same_workspace", [True, False], ids=["same-workspace", "two-workspaces"])
def test_concurrent_builds_share_a_cache(workspace: WorkspaceFactory, tmp_path: Path, same_workspace: bool) -> None:
    first = workspace(CONCURRENT, name="one")
    second = first if same_workspace else workspace(CONCURRENT, name="two")
    logs = [tmp_path / "one.jsonl", tmp_path / "two.jsonl"]
    procs = [
        start_mk(ws, "build", "-j3", "//pkg:all", "--json-events", str(log))
        for ws, log in zip((first, second), logs, strict=True)
    ]
    try:
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, (out, err)
        parse_summary(out)
    expected = "generated\n0\ngenerated\n1\ngenerated\n2\n"
    assert first.read("mk-out/pkg/all.txt") == expected
    assert second.read("mk-out/pkg/all.txt") == expected
    # Both builds ran the slow actions at the same time (neither could use the other's result),
    # so the same keys were written concurrently; the keys are the same in both workspaces.
    for log in logs:
        slow = [e for e in read_events(log) if str(e["label"]).startswith("//pkg:slow")]
        assert {e["status"] for e in slow} == {"executed"}, slow
    keys = [{e["label"]: e["key"] for e in read_events(log)} for log in logs]
    assert keys[0] == keys[1]

    verify = first.mk("cache", "verify")
    assert verify.code == 0, verify
    assert verify.out.endswith(" 0 corrupt, 0 action results dropped\n")
    assert_cache_is_sound(first.cache_dir)
    assert scratch_entries(first.cache_dir) == []
    for ws in {id(first): first, id(second): second}.values():
        summary = parse_summary(ws.build("//pkg:all").out)
        assert (summary.executed, summary.cached) == (0, 5)


# ---- ContentStore -------------------------------------------------------------------------------


def test_content_store_put_and_read(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    data = b"hello, world\n" * 1000
    digest = cas.put_bytes(data)
    assert digest == blake(data) == digest_bytes(data)
    path = tmp_path / "cas" / digest[:2] / digest
    assert cas.path(digest) == path and path.is_file()
    stored = path.read_bytes()
    assert stored.startswith(b"\x28\xb5\x2f\xfd") and len(stored) < len(data)  # zstd-compressed
    assert cas.has(digest)
    assert cas.read_bytes(digest) == data
    assert b"".join(cas.stream(digest)) == data
    assert cas.verify(digest)
    assert list(cas.digests()) == [digest]
    assert cas.put_bytes(data) == digest  # idempotent
    assert [p.name for p in path.parent.iterdir()] == [digest]  # no temp files left behind


def test_content_store_put_file_streams_to_the_same_blob(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path / "c")
    source = tmp_path / "big.bin"
    data = os.urandom(3 << 20)  # more than one chunk
    source.write_bytes(data)
    digest = cas.put_file(source)
    assert digest == blake(data)
    assert cas.read_bytes(digest) == data
    assert cas.put_bytes(data) == digest
    assert len(list(cas.digests())) == 1


def test_content_store_empty_blob(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    digest = cas.put_bytes(b"")
    assert cas.read_bytes(digest) == b""
    assert cas.verify(digest)


@pytest.mark.parametrize(
    "corruption",
    [
        pytest.param(lambda stored: b"garbage", id="garbage"),
        pytest.param(lambda stored: stored[: len(stored) // 2], id="truncated"),
        pytest.param(lambda stored: zstandard.ZstdCompressor().compress(b"other bytes"), id="other-content"),
        pytest.param(lambda stored: stored[:-1] + bytes([stored[-1] ^ 1]), id="bit-flip"),
    ],
)
def test_content_store_detects_and_drops_a_corrupt_blob(tmp_path: Path, corruption: Callable[[bytes], bytes]) -> None:
    cas = ContentStore(tmp_path)
    data = b"precious bytes\n" * 100
    digest = cas.put_bytes(data)
    path = cas.path(digest)
    path.write_bytes(corruption(path.read_bytes()))
    with pytest.raises(CorruptBlobError) as raised:
        cas.read_bytes(digest)
    assert raised.value.digest == digest
    assert not path.exists(), "a corrupt blob must be removed, never used again"
    with pytest.raises(MissingBlobError):
        cas.read_bytes(digest)
    # Put back, it is whole again.
    assert cas.put_bytes(data) == digest
    assert cas.read_bytes(digest) == data


def test_content_store_verify_reports_corruption(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    good = cas.put_bytes(b"good")
    bad = cas.put_bytes(b"bad")
    cas.path(bad).write_bytes(zstandard.ZstdCompressor().compress(b"evil"))
    assert cas.verify(good)
    assert not cas.verify(bad)
    assert not cas.has(bad)
    assert list(cas.digests()) == [good]


def test_content_store_missing_blob(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    digest = blake(b"never stored")
    assert not cas.has(digest)
    with pytest.raises(MissingBlobError):
        cas.read_bytes(digest)


def test_content_store_put_compressed_verifies_before_storing(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    data = b"from a remote\n"
    compressed = zstandard.ZstdCompressor().compress(data)
    with pytest.raises(CorruptBlobError):
        cas.put_compressed(blake(b"something else"), compressed)
    assert not cas.has(blake(b"something else"))
    cas.put_compressed(blake(data), compressed)
    assert cas.read_bytes(blake(data)) == data


def test_content_store_listing_skips_temp_files(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    digest = cas.put_bytes(b"x")
    (cas.path(digest).parent / ".tmp-abandoned").write_bytes(b"half")
    (tmp_path / "cas" / ".tmp-abandoned").write_bytes(b"half")
    assert list(cas.digests()) == [digest]


# ---- StatCache ----------------------------------------------------------------------------------


def _aged(path: Path, content: bytes, seconds: float = 10.0) -> Path:
    path.write_bytes(content)
    when = time.time() - seconds
    os.utime(path, (when, when))
    return path


def test_stat_cache_hashes_once_while_the_file_is_unchanged(tmp_path: Path) -> None:
    file = _aged(tmp_path / "f.txt", b"one\n")
    stats = StatCache(tmp_path / "stat.msgpack")
    assert stats.digest(file) == FileDigest(blake(b"one\n"), False)
    assert stats.digest(file) == FileDigest(blake(b"one\n"), False)
    assert stats.hashes == 1


def test_stat_cache_rehashes_on_any_stat_change(tmp_path: Path) -> None:
    file = _aged(tmp_path / "f.txt", b"one\n")
    stats = StatCache(tmp_path / "stat.msgpack")
    stats.digest(file)
    st = file.stat()

    # Same size and same mtime, different bytes: the ctime still moves, so it is caught.
    file.write_bytes(b"two\n")
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stats.digest(file).digest == blake(b"two\n")
    assert stats.hashes == 2

    # chmod +x: the executable bit is part of the result.
    os.chmod(file, 0o755)
    assert stats.digest(file) == FileDigest(blake(b"two\n"), True)
    assert stats.hashes == 3

    # Replaced by another file (new inode) with the same content, size and times.
    other = _aged(tmp_path / "g.txt", b"two\n")
    os.chmod(other, 0o755)
    os.utime(other, ns=(file.stat().st_atime_ns, file.stat().st_mtime_ns))
    os.replace(other, file)
    assert stats.digest(file) == FileDigest(blake(b"two\n"), True)
    assert stats.hashes == 4


def test_stat_cache_does_not_trust_a_racily_clean_entry(tmp_path: Path) -> None:
    file = tmp_path / "fresh.txt"
    file.write_bytes(b"fresh\n")  # mtime is now: hashed within one timestamp tick of its write
    stats = StatCache(tmp_path / "stat.msgpack")
    stats.digest(file)
    stats.digest(file)
    assert stats.hashes == 2


def test_stat_cache_persists(tmp_path: Path) -> None:
    file = _aged(tmp_path / "f.txt", b"data\n")
    store = tmp_path / "stat" / "ws.msgpack"
    stats = StatCache(store)
    stats.digest(file)
    stats.save()
    assert store.is_file()
    reloaded = StatCache(store)
    assert reloaded.digest(file) == FileDigest(blake(b"data\n"), False)
    assert reloaded.hashes == 0


def test_stat_cache_remembers_files_mk_wrote(tmp_path: Path) -> None:
    file = tmp_path / "out.txt"
    file.write_bytes(b"built\n")
    stats = StatCache(tmp_path / "stat.msgpack")
    stats.record_written(file, FileDigest(blake(b"built\n"), False))
    assert stats.digest(file) == FileDigest(blake(b"built\n"), False)
    assert stats.hashes == 0
    file.write_bytes(b"edited by hand\n")
    assert stats.digest(file).digest == blake(b"edited by hand\n")


def test_stat_cache_survives_a_damaged_file(tmp_path: Path) -> None:
    store = tmp_path / "stat.msgpack"
    store.write_bytes(b"\xc1 not msgpack")
    file = _aged(tmp_path / "f.txt", b"x")
    stats = StatCache(store)
    assert stats.digest(file).digest == blake(b"x")
    store.write_bytes(msgpack.packb({str(file): ["wrong", "shape"]}))
    assert StatCache(store).digest(file).digest == blake(b"x")


def test_stat_cache_rejects_missing_files_and_directories(tmp_path: Path) -> None:
    stats = StatCache(tmp_path / "stat.msgpack")
    with pytest.raises(FileNotFoundError):
        stats.digest(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        stats.digest(tmp_path)


def test_gc_removes_temp_files_left_by_killed_writers(workspace: WorkspaceFactory) -> None:
    ws = workspace({"p/BUILD": 'write_file(name = "w", out = "w.txt", content = "x")\n'})
    ws.build("//p:w")
    leftovers = [ws.cache_dir / "cas" / ".tmp-abc", ws.cache_dir / "ac" / "00" / ".tmp-def"]
    for leftover in leftovers:
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half a blob")
    result = ws.mk("cache", "gc", "--max-size", "1G")
    assert result.code == 0, result
    assert not any(p.exists() for p in leftovers)
    assert ws.build("//p:w").out.splitlines()[-1].startswith("mk: 1 targets, 1 actions: 0 executed, 1 cached")


def test_remembered_results_are_not_trusted_once_their_entry_is_gone(chain: Workspace, tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    chain.build("//pkg:use", events=events)
    keys = {str(e["label"]): str(e["key"]) for e in read_events(events)}
    (chain.cache_dir / "ac" / keys["//pkg:use"][:2] / keys["//pkg:use"]).unlink()
    (chain.root / "mk-out/pkg/use.txt").unlink()
    chain.build("//pkg:use", events=events)
    assert executed_labels(events) == ["//pkg:use"]
    assert (chain.root / "mk-out/pkg/use.txt").read_bytes() == USE
    assert_cache_is_sound(chain.cache_dir)


def test_gc_keeps_results_whole_including_the_files_of_a_tree(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    ws = workspace({"p/BUILD": 'layer(name = "l", files = {"/etc/data": "data.txt"})\ntar(name = "t", src = ":l")\n',
                    "p/data.txt": "content of a file that lives only inside the tree\n"})
    events = tmp_path / "e.jsonl"
    ws.build("//p:t", events=events)
    data_blob = blob_path(ws.cache_dir, b"content of a file that lives only inside the tree\n")
    assert data_blob.is_file()
    assert ws.mk("cache", "gc", "--max-size", "10G").code == 0
    assert data_blob.is_file()  # referenced through the layer's tree
    data_blob.unlink()  # lost anyway: gc must then drop the layer's result, not keep a hollow one
    assert ws.mk("cache", "gc", "--max-size", "10G").code == 0
    tar = (ws.root / "mk-out/p/t.tar").read_bytes()
    (ws.root / "mk-out/p/t.tar").unlink()
    ws.build("//p:t", events=events)
    assert executed_labels(events) == ["//p:l"]  # the same tree again, so the tar's result still holds
    assert (ws.root / "mk-out/p/t.tar").read_bytes() == tar
