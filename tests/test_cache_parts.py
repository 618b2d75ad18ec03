"""`mk cache stats` and `mk cache gc` see every part of the cache: what mk's layers and rule
families write under it (blobs, results, graphs, stat caches, Debian indices, toolchains, ...),
each sized as `du` sizes it, and gc keeps the most recently used entries up to its limit."""

from __future__ import annotations

import os
import time

import pytest
from cachedisk import EVICTABLE_PARTS as EVICTABLE
from cachedisk import cache_stats, du, entries_under, files_under, last_use, on_disk
from conftest import Workspace, WorkspaceFactory, assert_cache_is_sound, executed_labels
from debrepo import Deb, Member, Repo

from mk.cache.action_cache import ActionCache, ActionResult
from mk.cache.cas import ContentStore
from mk.cache.reapi.digests import DigestIndex
from mk.cache.units import human_size

BUILD = """
deb_packages(name = "base", packages = ["app"], suites = ["bookworm"], keyring = "{keyring}")
"""

DROPPED = ("toolchains", "sandbox-debug")
KEPT = ("tmp", "lock", "vm", "tree-history", "run")
KEPT_FILES = ("graphs/key",)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    repo = Repo(tmp_path_factory.mktemp("debian") / "repo")
    repo.add("bookworm", Deb("app", members=[Member("./usr/bin/", kind="dir"),
                                             Member("./usr/bin/app", os.urandom(50_000), mode=0o755)]))
    repo.publish()
    return repo


def every_kind_of_entry(workspace: WorkspaceFactory, repo: Repo) -> Workspace:
    """A workspace whose cache holds something in each part mk writes, and a folder it does not."""
    texts = {f"{kind}/BUILD": "\n".join(
        f'write_file(name = "{kind}{i}", out = "{kind}{i}.txt", content = "{kind} {i} " * 2000)' for i in range(6))
        for kind in ("old", "new")}
    ws = workspace({"os/BUILD": BUILD.format(keyring=repo.keyring), **texts},
                   toml=f'debian_mirror = "{repo.url}"\n')
    assert ws.mk("lock", "//os:base").code == 0  # Debian indices
    ws.build("//os:base")  # the package, by sha256 and as a blob
    ws.build("//old:all")
    ws.build("//new:all")
    cache = ws.cache_dir
    # A result this machine got from a remote cache, as the remote cache keeps them.
    local = ActionCache(cache)
    key = next(iter(local.all_keys()))
    remembered = ActionResult.decode(local.path(key).read_bytes())
    ActionCache(cache / "remote-ac", "0123456789abcdef").put("f" * 64, remembered)
    # The SHA-256 of a blob, as remote execution remembers it.
    DigestIndex(cache).sha256(remembered.outputs[0].digest, ContentStore(cache))
    ContentStore(cache).sha256(remembered.outputs[0].digest)  # a fact learnt from a blob's bytes
    # What `mk run` remembers of this machine, a toolchain written out (hard links and all) and a
    # sandbox kept by --sandbox-debug, as those write them.
    (cache / "vm").mkdir()
    (cache / "vm/kvm-works-0123").write_text("tcg\n")
    tools = cache / "toolchains" / ("a" * 64) / "usr/bin"
    tools.mkdir(parents=True)
    (tools / "sh").write_bytes(os.urandom(20_000))
    os.link(tools / "sh", tools / "bash")
    (cache / "sandbox-debug/1234-genrule/tmp").mkdir(parents=True)
    (cache / "sandbox-debug/1234-genrule/tmp/out").write_bytes(os.urandom(9_000))
    (cache / "mystery").mkdir()
    (cache / "mystery/notes.txt").write_text("not mk's\n")
    return ws


def test_stats_lists_every_part_with_its_size_on_disk(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = every_kind_of_entry(workspace, repo)
    parts = cache_stats(ws)
    names = [*EVICTABLE, *DROPPED, *KEPT]
    assert sorted(parts) == sorted([*(n if n == "lock" else f"{n}/" for n in names), "mystery/", "total"])
    for name in names:
        path = ws.cache_dir / name
        size, files, what = parts[name if name == "lock" else f"{name}/"]
        assert (size, files) == (human_size(du(path)), len(entries_under(path))), name
        rule = "evictable" if name in EVICTABLE else "dropped by gc" if name in DROPPED else "kept"
        assert what.endswith(f"[{rule}]"), (name, what)
    assert parts["mystery/"] == (human_size(du(ws.cache_dir / "mystery")), 1, "not written by mk: left alone [kept]")
    assert parts["total"][:2] == (human_size(du(ws.cache_dir)), len(entries_under(ws.cache_dir)))
    assert parts["toolchains/"][1] == 2 and parts["debian-indices/"][1] >= 1 and parts["by-sha256/"][1] == 1


def test_what_a_build_or_a_lock_reads_again_is_marked_used(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = every_kind_of_entry(workspace, repo)
    hour_ago = time.time() - 3600
    for path in files_under(ws.cache_dir):
        os.utime(path, (hour_ago, hour_ago))
    assert ws.mk("lock", "//os:base").code == 0
    ws.build("//new:all")
    used = sorted(str(p.relative_to(ws.cache_dir)).split("/")[0] + ("/" + p.suffix if p.suffix else "")
                  for p in files_under(ws.cache_dir) if p.stat().st_mtime > hour_ago + 60)
    # The index `mk lock` read again; the graph of //new:all, the results its last build used and
    # the stat cache; the six results the build found (blobs inherit their recency).
    assert used == ["ac", "ac", "ac", "ac", "ac", "ac", "debian-indices/.gz", "graphs/.pickle", "graphs/.results",
                    "stat/.msgpack"], used


def test_gc_keeps_the_most_recently_used_entries_up_to_the_limit(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = every_kind_of_entry(workspace, repo)
    cache = ws.cache_dir
    # Every file was last used an hour or more ago, each at another second, in no particular order...
    now = time.time()
    everything = files_under(cache)
    for i, path in enumerate(sorted(everything, key=lambda p: hash(p.name))):
        os.utime(path, (now - 3600 - i, now - 3600 - i))
    # ... but what a build of //new uses now: its results (and their blobs), its graph, the stat cache.
    events = cache.parent / "events.jsonl"
    ws.build("//new:all", events=events)
    assert executed_labels(events) == []
    when = last_use(cache)
    fresh = {p for p, t in when.items() if t > now - 60}
    assert len([p for p in fresh if p.parent.parent.name == "ac"]) == 6
    aged = sorted((p for p in when if p not in fresh), key=lambda p: when[p])
    assert len(aged) > 10

    sizes = {p: on_disk(p) for p in aged}
    limit = du(cache) - sum(du(cache / name) for name in DROPPED) - sum(sizes.values()) // 2
    result = ws.mk("cache", "gc", "--max-size", str(limit))
    assert result.code == 0, result
    left = du(cache)
    assert left <= limit
    assert result.out.endswith(f", {human_size(left)} left\n"), (result.out, left)
    assert all(p.exists() for p in fresh)
    evicted = [p for p in aged if not p.exists()]
    kept = [p for p in aged if p.exists()]
    assert evicted and kept
    # Least recently used first...
    assert max(when[p] for p in evicted) <= min(when[p] for p in kept)
    # ... and no more than the limit asks: the last one evicted (with the folder it emptied) was needed.
    assert left > limit - max(sizes[p] for p in evicted) - on_disk(cache / "cas")
    for name in (*KEPT_FILES, "lock", "vm/kvm-works-0123", "mystery/notes.txt"):
        assert (cache / name).exists(), name
    for name in DROPPED:
        assert files_under(cache / name) == [], name
    assert_cache_is_sound(cache)
    ws.build("//new:all", events=events)
    assert executed_labels(events) == []


def test_gc_says_what_it_cannot_evict_when_the_limit_is_below_what_is_kept(workspace: WorkspaceFactory,
                                                                             repo: Repo) -> None:
    ws = every_kind_of_entry(workspace, repo)
    result = ws.mk("cache", "gc", "--max-size", "0")
    assert result.code == 0, result
    left = du(ws.cache_dir)
    assert result.out.splitlines()[0].endswith(f", {human_size(left)} left"), result.out
    assert result.err == (
        f"mk: warning: {human_size(left)} is over the limit of 0 B: gc keeps mk's small state (tmp/, lock, "
        "graphs/key, tree-history/, vm/) and the folders, and leaves alone what mk does not write (mystery/)\n")
    for name in EVICTABLE:
        assert [p for p in files_under(ws.cache_dir / name) if p.name != "key"] == [], name
