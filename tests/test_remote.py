"""The shared remote cache, end to end: real `mk` builds against a real nginx (WebDAV PUT) and
against `mk cache serve`, plus a server that misbehaves on demand.

Machine A builds with an empty cache and uploads; machine B (another empty cache directory)
builds the same targets from the remote. Every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import blake3
import msgpack
import pytest
import zstandard
from cachedisk import cache_stats
from conftest import (
    MK,
    Workspace,
    WorkspaceFactory,
    assert_cache_is_sound,
    fake_diffoscope,
    mk_env,
    parse_summary,
    read_events,
)
from remote_servers import Remote, faulty_server, free_port, nginx_server, serve_process

from mk.cache.action_cache import ActionCache, ActionResult
from mk.cache.cas import ContentStore
from mk.cache.signing import SecretKey, generate, parse_public_key, sign, write_key_pair
from mk.engine.placed import RECORD

# The actions of //examples below: 3 write_file and genrule outputs, the layer, the root, the cpio,
# the tar, and the OCI image's one layer and its archive.
ACTIONS = 10

# A copy of the repository's small examples (a macro, genrules, a layer, a root filesystem and the
# three archive writers), kept here so the tests need no network and follow no later edit there.
EXAMPLES = {
    "examples/BUILD": r'''# Examples of the BUILD language. Build them all with `mk build //examples`.
load(":defs.bzl", "banner")

write_file(
    name = "os_release",
    out = "os-release",
    lines = [
        'PRETTY_NAME="mk example image"',
        "ID=mk-example",
        "VERSION_ID=1",
    ],
)

genrule(
    name = "motd",
    srcs = ["motd.in", ":os_release"],
    outs = ["motd"],
    cmd = "sed -e \"s/@NAME@/$$(grep ^PRETTY_NAME $(location :os_release) | cut -d'\"' -f2)/\" " +
          "$(location motd.in) > $@",
)

banner(
    name = "motd_banner",
    src = ":motd",
)

genrule(
    name = "file_list",
    srcs = glob(["*.in"]),
    outs = ["file-list.txt"],
    cmd = "for f in $(SRCS); do printf '%s %s\\n' \"$$(sha256sum < $$f | cut -c1-16)\" \"$$f\"; done > $@",
)

# A small root filesystem, written out as an initramfs, a tarball and an OCI image.
layer(
    name = "etc",
    files = {
        "/etc/motd": ":motd_banner",
        "/etc/os-release": ":os_release",
        "/usr/share/mk/file-list.txt": ":file_list",
    },
    directories = ["/tmp", "/root"],
    modes = {"/tmp": "1777", "/root": "0700"},
    symlinks = {"/usr/lib/os-release": "../../etc/os-release"},
    devices = {"/dev/console": "c 5 1", "/dev/null": "c 1 3"},
    users = ["root:0:0:root:/root:/bin/sh", "nobody:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"],
    groups = ["root:0", "nogroup:65534"],
)

rootfs(
    name = "rootfs",
    layers = [":etc"],
    remove = ["/usr/share/mk/**"],
)

cpio(name = "initramfs", src = ":rootfs", compression = "zstd")

tar(name = "rootfs_tar", src = ":rootfs", compression = "gzip")

oci_image(name = "oci", layers = [":etc"], cmd = ["/bin/sh"])

filegroup(
    name = "examples",
    srcs = [":motd_banner", ":file_list", ":os_release", ":initramfs", ":rootfs_tar", ":oci"],
)
''',
    "examples/defs.bzl": r'''"""Macros for the examples."""

def banner(name, src, width = 40):
    """Frames the text of `src` between two rules of `width` dashes."""
    rule = "-" * width
    genrule(
        name = name,
        srcs = [src],
        outs = [name + ".txt"],
        cmd = "{ echo '%s'; cat $<; echo '%s'; } > $@" % (rule, rule),
    )
''',
    "examples/motd.in": '''Welcome to @NAME@.
Built reproducibly by mk.
''',
}
UNTRUSTED = "not signed by a trusted key"
GAVE_UP = "carrying on without it for the rest of this build"


@dataclass(frozen=True)
class Keys:
    secret: Path
    public: str


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    key_file, _, public = write_key_pair(tmp_path / "ci")
    return Keys(key_file, public.line())


@pytest.fixture
def examples(workspace: WorkspaceFactory) -> Workspace:
    return workspace(EXAMPLES)


@pytest.fixture(params=["serve", "nginx"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Remote]:
    if request.param == "serve":
        with serve_process(tmp_path / "served") as server:
            yield server
    else:
        with nginx_server(tmp_path / "nginx") as server:
            yield server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Remote]:
    with serve_process(tmp_path / "served") as server:
        yield server


def writer(url: str, keys: Keys, **extra: str) -> dict[str, str]:
    """Machine A (CI): reads and writes, signs what it uploads."""
    return {"MK_REMOTE_CACHE": url, "MK_SIGNING_KEY": str(keys.secret), "MK_TRUSTED_KEYS": keys.public,
            "MK_REMOTE_TIMEOUT": "5", **extra}


def reader(url: str, keys: Keys, **extra: str) -> dict[str, str]:
    """Machine B (a laptop): trusts A's key, has no signing key, so it only reads."""
    return {"MK_REMOTE_CACHE": url, "MK_TRUSTED_KEYS": keys.public, "MK_REMOTE_TIMEOUT": "5", **extra}


def build(ws: Workspace, cache: Path, env: dict[str, str], *targets: str, events: Path | None = None,
          jobs: int | None = None) -> tuple[str, str]:
    """`mk build` (default //examples) with its own cache directory; must succeed."""
    args = ["build", *(targets or ("//examples",))]
    if events is not None:
        args += ["--json-events", str(events)]
    if jobs is not None:
        args += ["-j", str(jobs)]
    result = ws.mk(*args, env={"MK_CACHE_DIR": str(cache), **env})
    assert result.code == 0, f"mk build failed ({result.code}):\n{result.out}\n{result.err}"
    return result.out, result.err


def outputs(ws: Workspace) -> dict[str, bytes]:
    """The files placed under mk-out (not mk's record of who placed them, which names the targets)."""
    root = ws.root / "mk-out"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != RECORD}


def fresh_outputs(ws: Workspace) -> None:
    """Forget what was placed, so that the next build must produce (or download) it again."""
    for path in sorted((ws.root / "mk-out").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()


def blobs(cache: Path) -> set[str]:
    return set(ContentStore(cache).digests())


def local_results(cache: Path, events: Path) -> dict[str, ActionResult]:
    """Every entry of `cache`'s (local) action cache, by the label of its action in a --json-events file."""
    ac = ActionCache(cache)
    label_of = {str(e["key"]): str(e["label"]) for e in read_events(events)}
    found = {key: ActionResult.decode(ac.path(key).read_bytes()) for key in ac.all_keys()}
    assert set(found) <= set(label_of), f"entries of no action of this build: {sorted(set(found) - set(label_of))}"
    return {label_of[key]: result for key, result in found.items()}


def reference_build(ws: Workspace, tmp_path: Path, *targets: str) -> dict[str, bytes]:
    """What a build with no remote at all gives (then mk-out is emptied again)."""
    build(ws, tmp_path / "reference-cache", {}, *targets)
    result = outputs(ws)
    fresh_outputs(ws)
    return result


# ---- the shared-cache flow --------------------------------------------------------------------


def test_second_machine_gets_everything_from_the_remote(
    examples: Workspace, remote: Remote, keys: Keys, tmp_path: Path
) -> None:
    out, err = build(examples, tmp_path / "A", writer(remote.url, keys))
    a = parse_summary(out)
    assert a.executed == a.actions == ACTIONS
    assert "uploaded" in err and f"and {a.actions} results" in err
    assert len(remote.names("ac")) == a.actions  # every result is on the server once A has finished
    built = outputs(examples)
    fresh_outputs(examples)

    out, err = build(examples, tmp_path / "B", reader(remote.url, keys))
    b = parse_summary(out)
    assert (b.executed, b.remote, b.local) == (0, b.actions, 0), out
    assert outputs(examples) == built  # identical bytes
    # Build without the bytes: only the requested outputs were downloaded, no intermediate tree.
    assert blobs(tmp_path / "B") == {blake3.blake3(data).hexdigest() for data in built.values()}
    assert f"downloaded {len(built)} blobs" in err and "uploaded 0 blobs" in err

    # The next build on B finds everything without asking the server (which is gone).
    remote.kill()
    out, err = build(examples, tmp_path / "B", reader(remote.url, keys))
    again = parse_summary(out)
    assert again.executed == 0 and again.cached == again.actions
    assert "warning" not in err and "remote cache" not in err, err
    assert outputs(examples) == built


def test_final_image_downloads_only_its_own_outputs(
    examples: Workspace, served: Remote, keys: Keys, tmp_path: Path
) -> None:
    build(examples, tmp_path / "A", writer(served.url, keys))
    image = (examples.root / "mk-out/examples/initramfs.cpio.zst").read_bytes()
    fresh_outputs(examples)

    out, err = build(examples, tmp_path / "B", reader(served.url, keys), "//examples:initramfs")
    summary = parse_summary(out)
    assert summary.executed == 0 and summary.remote == summary.actions
    assert blobs(tmp_path / "B") == {blake3.blake3(image).hexdigest()}
    assert "downloaded 1 blobs" in err
    assert outputs(examples) == {"examples/initramfs.cpio.zst": image}


def test_blobs_stored_by_in_process_actions_are_uploaded(
    examples: Workspace, served: Remote, keys: Keys, tmp_path: Path
) -> None:
    """A layer's file contents are not its outputs (it outputs a manifest), yet a machine that
    gets the manifest from the remote must be able to write the tree out."""
    expected = reference_build(examples, tmp_path, "//examples:initramfs")
    build(examples, tmp_path / "A", writer(served.url, keys), "//examples:etc")
    fresh_outputs(examples)

    events = tmp_path / "b.jsonl"
    build(examples, tmp_path / "B", reader(served.url, keys), "//examples:initramfs", events=events)
    ran = sorted(str(e["mnemonic"]) for e in read_events(events) if e["status"] == "executed")
    assert ran == ["Cpio", "MergeTrees"]  # the layer and its inputs came from the remote
    assert outputs(examples) == expected
    assert_cache_is_sound(tmp_path / "B", logs=True)


def test_ls_and_diff_read_what_they_lack_from_the_remote(
    workspace: WorkspaceFactory, served: Remote, keys: Keys, tmp_path: Path
) -> None:
    """A tree's file contents are not downloaded when a build takes the tree from the remote; to
    compare those files, `mk diff` reads them from the remote too."""
    ws = workspace({"p/BUILD": 'layer(name = "a", files = {"/etc/motd": "one"})\n'
                               'layer(name = "b", files = {"/etc/motd": "two"})\n',
                    "p/one": "one\n", "p/two": "two\n"})
    build(ws, tmp_path / "A", writer(served.url, keys), "//p:a", "//p:b")
    env = {"MK_CACHE_DIR": str(tmp_path / "B"), **reader(served.url, keys), **fake_diffoscope(tmp_path / "bin")}
    result = ws.mk("diff", "//p:a", "//p:b", env=env)
    assert result.code == 0, result.err
    assert result.out.splitlines()[-3:] == ["a/etc/motd: one", "b/etc/motd: two",
                                            "mk diff: 0 added, 0 removed, 1 changed; files 4 B -> 4 B"]


@pytest.mark.parametrize("how", ["env", "flag", "setting", "no-signing-key"])
def test_read_only_uploads_nothing(
    workspace: WorkspaceFactory, remote: Remote, keys: Keys, tmp_path: Path, how: str
) -> None:
    ws = workspace(EXAMPLES, toml="remote_upload = false\n" if how == "setting" else "")
    env = writer(remote.url, keys)
    if how == "env":
        env["MK_REMOTE_UPLOAD"] = "0"
    if how == "no-signing-key":
        del env["MK_SIGNING_KEY"]
    args = ["build", "//examples"] + (["--no-remote-upload"] if how == "flag" else [])
    result = ws.mk(*args, env={"MK_CACHE_DIR": str(tmp_path / "A"), **env})
    assert result.code == 0, result.err
    assert parse_summary(result.out).executed == ACTIONS
    assert remote.names("ac") == set() and remote.names("cas") == set()
    assert "uploaded 0 blobs (0 B) and 0 results" in result.err
    if remote.log is not None and remote.log.name == "access.log":  # nginx: not even tried
        assert '"PUT ' not in remote.log.read_text()


def test_results_made_with_the_host_tools_stay_local_unless_asked(
    workspace: WorkspaceFactory, served: Remote, keys: Keys, tmp_path: Path
) -> None:
    """They hold whatever this machine's tools made: another machine must not take them as its own."""
    ws = workspace(EXAMPLES, toml='toolchain = "host"\n')
    out, err = build(ws, tmp_path / "A", writer(served.url, keys), events=tmp_path / "a.jsonl")
    genrules = {str(e["key"]) for e in read_events(tmp_path / "a.jsonl") if e["mnemonic"] == "Genrule"}
    assert len(genrules) == 3
    uploaded = served.names("ac")
    assert len(uploaded) == parse_summary(out).executed - 3 and not uploaded & genrules
    assert "their results are kept out of remote caches" in err

    ws.write("mk.toml", 'toolchain = "host"\nremote_upload_host_results = true\n')
    fresh_outputs(ws)
    _, err = build(ws, tmp_path / "A2", writer(served.url, keys))
    assert genrules <= served.names("ac")
    assert "their results are uploaded, as remote_upload_host_results asks" in err


# ---- trust --------------------------------------------------------------------------------------


def put(remote: Remote, kind: str, name: str, body: bytes) -> None:
    parts = urlsplit(remote.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request("PUT", f"{parts.path}/{kind}/{name}", body=body)
        response = conn.getresponse()
        response.read()
        assert 200 <= response.status < 300, response.status
    finally:
        conn.close()


def test_forged_unsigned_and_replayed_results_are_rejected(
    examples: Workspace, remote: Remote, keys: Keys, tmp_path: Path
) -> None:
    events = tmp_path / "a.jsonl"
    build(examples, tmp_path / "A", writer(remote.url, keys), events=events)
    built = outputs(examples)
    fresh_outputs(examples)
    results = local_results(tmp_path / "A", events)

    def lie(label: str) -> ActionResult:
        """The result of `label` with its output pointing at another output's (real) blob."""
        real = results[label]
        other = results["//examples:os_release"].outputs[0].digest
        if real.outputs[0].digest == other:
            other = results["//examples:file_list"].outputs[0].digest
        return ActionResult((real.outputs[0]._replace(digest=other),), 0, real.log_digest)

    key_of = {str(e["label"]): str(e["key"]) for e in read_events(events)}
    thief = SecretKey("ci", generate("ci").seed)  # same name as the trusted key, other key material
    stranger = SecretKey("x", b"\0" * 32)
    envelope_of_banner = sign(stranger, key_of["//examples:motd_banner"], lie("//examples:motd_banner"))
    good_envelope_of_motd = (remote.file("ac", key_of["//examples:motd"])).read_bytes()
    tampered = dict(msgpack.unpackb(good_envelope_of_motd))
    tampered["result"] = lie("//examples:motd").encode()
    forgeries = {
        "//examples:os_release": lie("//examples:os_release").encode(),  # unsigned
        "//examples:file_list": sign(thief, key_of["//examples:file_list"], lie("//examples:file_list")),
        "//examples:motd_banner": envelope_of_banner,  # signed by an unknown key
        "//examples:motd": msgpack.packb(tampered),  # the signature no longer matches the bytes
        # A genuine envelope, replayed for another key: the key is part of what is signed.
        "//examples:initramfs": remote.file("ac", key_of["//examples:rootfs_tar"]).read_bytes(),
        "//examples:oci": b"\x00garbage",
    }
    for label, body in forgeries.items():
        put(remote, "ac", key_of[label], body)

    events_b = tmp_path / "b.jsonl"
    out, err = build(examples, tmp_path / "B", reader(remote.url, keys), events=events_b)
    ran = sorted(str(e["label"]) for e in read_events(events_b) if e["status"] == "executed")
    assert ran == sorted(forgeries)  # each forged result was ignored and the action ran locally
    assert parse_summary(out).remote == ACTIONS - len(forgeries)
    assert outputs(examples) == built  # a poisoned cache never changes the output
    assert err.count(UNTRUSTED) == 1, err  # one warning per build
    assert f"{len(forgeries)} rejected" in err
    assert_cache_is_sound(tmp_path / "B", logs=True)


@pytest.mark.parametrize("damage", ["other-content", "not-zstd", "missing"])
def test_corrupt_or_missing_blob_on_the_server_is_rebuilt_locally(
    examples: Workspace, remote: Remote, keys: Keys, tmp_path: Path, damage: str
) -> None:
    build(examples, tmp_path / "A", writer(remote.url, keys))
    built = outputs(examples)
    fresh_outputs(examples)
    image = remote.file("cas", blake3.blake3(built["examples/initramfs.cpio.zst"]).hexdigest())
    if damage == "missing":
        image.unlink()
    else:
        image.write_bytes(zstandard.ZstdCompressor().compress(b"evil") if damage == "other-content" else b"junk")

    events = tmp_path / "b.jsonl"
    out, err = build(examples, tmp_path / "B", reader(remote.url, keys), events=events)
    assert outputs(examples) == built
    assert ("is missing" if damage == "missing" else "has the wrong bytes") in err, err
    summary = parse_summary(out)
    assert (summary.executed, summary.remote) == (ACTIONS, 0), out  # the retry used no remote result at all
    # Nothing bad was remembered as a local result: every one names blobs that B has, intact.
    assert_cache_is_sound(tmp_path / "B", logs=True)
    results = local_results(tmp_path / "B", events)
    assert sorted(results) == sorted({str(e["label"]) for e in read_events(events)})  # all of them ran on B
    assert [(o.path, o.digest) for o in results["//examples:initramfs"].outputs] == [
        ("examples/initramfs.cpio.zst", blake3.blake3(built["examples/initramfs.cpio.zst"]).hexdigest())]


# ---- servers that fail --------------------------------------------------------------------------


SLOW = {
    "pkg/BUILD": textwrap.dedent("""
        genrule(name = "first", outs = ["first.txt"], cmd = "echo first > $@")
        genrule(name = "slow", srcs = [":first"], outs = ["slow.txt"], cmd = "sleep 2; cat $< > $@; echo slow >> $@")
        genrule(name = "last", srcs = [":slow"], outs = ["last.txt"], cmd = "cat $< > $@; echo last >> $@")
    """),
}


def build_killing_the_server(ws: Workspace, env: dict[str, str], first_uploaded: Callable[[], bool],
                             kill: Callable[[], None]) -> tuple[int, str, str]:
    """`mk build //pkg:last -j 1` of SLOW, the server killed once :first went up, while :slow runs:
    (exit status, stdout, stderr)."""
    proc = subprocess.Popen([MK, "build", "//pkg:last", "-j", "1"], cwd=ws.root, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not first_uploaded() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first_uploaded(), "the first output or result was never uploaded"
        kill()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def test_server_killed_mid_build(workspace: WorkspaceFactory, served: Remote, keys: Keys, tmp_path: Path) -> None:
    ws = workspace(SLOW)
    env = mk_env(tmp_path / "A", writer(served.url, keys))
    code, out, err = build_killing_the_server(ws, env, lambda: bool(served.names("ac")), served.kill)
    assert code == 0, err
    assert parse_summary(out).executed == 3
    assert ws.read("mk-out/pkg/last.txt") == "first\nslow\nlast\n"
    assert err.count(GAVE_UP) == 1, err
    assert_cache_is_sound(tmp_path / "A", logs=True)

    with serve_process(served.storage) as again:  # the server comes back with what it had
        fresh_outputs(ws)
        events = tmp_path / "b.jsonl"
        build(ws, tmp_path / "B", reader(again.url, keys), "//pkg:last", events=events)
        status = {str(e["label"]): e["status"] for e in read_events(events)}
        assert status == {"//pkg:first": "cached", "//pkg:slow": "executed", "//pkg:last": "executed"}
        assert ws.read("mk-out/pkg/last.txt") == "first\nslow\nlast\n"


def test_server_dying_while_a_build_reads_from_it(examples: Workspace, keys: Keys, tmp_path: Path) -> None:
    with faulty_server(tmp_path / "store") as (server, faults):
        build(examples, tmp_path / "A", writer(server.url, keys))
        built = outputs(examples)
        fresh_outputs(examples)
        faults.requests.clear()
        faults.mode, faults.die_after = "die", 4
        out, err = build(examples, tmp_path / "B", reader(server.url, keys))
    assert outputs(examples) == built
    assert err.count(GAVE_UP) == 1, err
    assert_cache_is_sound(tmp_path / "B", logs=True)
    summary = parse_summary(out)
    assert (summary.executed, summary.remote) == (ACTIONS, 0), out  # the retry used no remote result at all


@pytest.mark.parametrize("mode", ["500", "hang"])
def test_failing_server_on_a_cold_build(examples: Workspace, keys: Keys, tmp_path: Path, mode: str) -> None:
    expected = reference_build(examples, tmp_path)
    with faulty_server(tmp_path / "store") as (server, faults):
        faults.mode = mode
        started = time.monotonic()
        out, err = build(examples, tmp_path / "A", writer(server.url, keys, MK_REMOTE_TIMEOUT="1"), jobs=2)
        took = time.monotonic() - started
    assert outputs(examples) == expected
    assert parse_summary(out).executed == ACTIONS
    assert err.count(GAVE_UP) == 1, err
    assert ("HTTP 500" if mode == "500" else "timed out") in err
    # The breaker: the two lookups in flight when the first one failed, then nothing (no upload either).
    assert [r[: len("GET /ac/")] for r in faults.requests] == ["GET /ac/"] * 2, faults.requests
    assert took < 20
    assert server.names("ac") == set()


@pytest.mark.parametrize("mode", ["500", "hang", "truncate", "wrong"])
def test_failing_server_on_a_build_that_reads_from_it(
    examples: Workspace, keys: Keys, tmp_path: Path, mode: str
) -> None:
    with faulty_server(tmp_path / "store") as (server, faults):
        build(examples, tmp_path / "A", writer(server.url, keys))
        built = outputs(examples)
        fresh_outputs(examples)
        faults.mode = mode
        _, err = build(examples, tmp_path / "B", reader(server.url, keys, MK_REMOTE_TIMEOUT="1"))
    assert outputs(examples) == built
    assert "warning: remote cache" in err
    assert err.count("warning: remote cache") == 1, err
    assert_cache_is_sound(tmp_path / "B", logs=True)


def test_unreachable_server(examples: Workspace, keys: Keys, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out, err = build(examples, tmp_path / "A", writer(url, keys))
    assert parse_summary(out).executed == ACTIONS
    assert err.count(GAVE_UP) == 1 and "connection failed" in err, err


# ---- auth, read-only servers, configuration ----------------------------------------------------


def test_token_auth_and_credentials_never_shown(examples: Workspace, keys: Keys, tmp_path: Path) -> None:
    token = "tok-5c1f0e9a7d"
    with serve_process(tmp_path / "store", env={"MK_CACHE_SERVE_TOKEN": token}) as server:
        out, err = build(examples, tmp_path / "A", writer(server.url, keys, MK_REMOTE_TOKEN=token))
        assert server.names("ac"), err
        fresh_outputs(examples)

        out, err = build(examples, tmp_path / "B", reader(server.url, keys, MK_REMOTE_TOKEN="wrong-3b8e2d"))
        assert "HTTP 401" in err and "wrong-3b8e2d" not in out + err
        assert parse_summary(out).executed == ACTIONS

        host = urlsplit(server.url).netloc
        for cache, env in [
            ("C", reader(f"http://ci:{token}@{host}", keys)),
            ("D", reader(server.url, keys, MK_REMOTE_USER="ci", MK_REMOTE_PASSWORD=token)),
        ]:
            fresh_outputs(examples)
            out, err = build(examples, tmp_path / cache, env)
            assert parse_summary(out).remote == ACTIONS, err
            assert token not in out + err
            assert f"remote cache http://{host}:" in err  # the URL is shown without its credentials

        # Even a failure's message carries no credentials.
        fresh_outputs(examples)
        server.kill()
        out, err = build(examples, tmp_path / "E", writer(f"http://ci:{token}@{host}", keys))
        assert GAVE_UP in err and token not in out + err


def test_read_only_server_refuses_uploads(examples: Workspace, keys: Keys, tmp_path: Path) -> None:
    with serve_process(tmp_path / "store", "--read-only") as server:
        out, err = build(examples, tmp_path / "A", writer(server.url, keys))
    assert parse_summary(out).executed == ACTIONS
    assert err.count("refuses uploads") == 1 and "HTTP 403" in err, err
    assert server.names("ac") == set() and server.names("cas") == set()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MK_REMOTE_CACHE": "ftp://cache.invalid/"}, "must be an http://, https://, grpc:// or grpcs:// URL"),
        ({"MK_REMOTE_CACHE": "ftp://u:hunter2@cache.invalid/"}, "(an URL with credentials)"),
        ({"MK_REMOTE_CACHE": "http://127.0.0.1:1", "MK_TRUSTED_KEYS": "nonsense"}, "MK_TRUSTED_KEYS: trusted key"),
        ({"MK_REMOTE_CACHE": "http://127.0.0.1:1", "MK_SIGNING_KEY": "/nonexistent/ci.key"}, "MK_SIGNING_KEY"),
        ({"MK_REMOTE_CACHE": "http://127.0.0.1:1", "MK_REMOTE_UPLOAD": "maybe"}, "MK_REMOTE_UPLOAD must be"),
        ({"MK_REMOTE_CACHE": "http://127.0.0.1:1", "MK_REMOTE_TIMEOUT": "soon"}, "MK_REMOTE_TIMEOUT must be"),
    ],
)
def test_bad_remote_configuration_is_a_usage_error(
    examples: Workspace, env: dict[str, str], message: str
) -> None:
    result = examples.mk("build", "//examples", env=env)
    assert result.code == 2
    assert message in result.err
    assert "hunter2" not in result.out + result.err
    parse_summary(result.out)


def test_remembered_results_in_cache_maintenance(
    examples: Workspace, served: Remote, keys: Keys, tmp_path: Path
) -> None:
    build(examples, tmp_path / "A", writer(served.url, keys))
    fresh_outputs(examples)
    build(examples, tmp_path / "B", reader(served.url, keys))
    env = {"MK_CACHE_DIR": str(tmp_path / "B")}
    verify = examples.mk("cache", "verify", env=env)
    assert verify.code == 0, verify.out  # results whose blobs are only remote are not "broken"
    assert cache_stats(examples, tmp_path / "B")["remote-ac/"][1] == ACTIONS
    assert examples.mk("cache", "gc", "--max-size", "0", env=env).code == 0
    assert cache_stats(examples, tmp_path / "B")["remote-ac/"][1] == 0


def test_no_http_or_crypto_import_without_network_use(
    examples: Workspace, served: Remote, keys: Keys, tmp_path: Path
) -> None:
    """A build that needs nothing from the network loads neither urllib3 nor cryptography."""
    build(examples, tmp_path / "A", writer(served.url, keys))
    probe = (
        "import sys\nfrom mk.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('loaded:', 'urllib3' in sys.modules, 'cryptography' in sys.modules)\n"
    )
    for env in ({}, writer(served.url, keys)):  # no remote; a remote, but every action a local hit
        proc = subprocess.run(
            [sys.executable, "-c", probe, "build", "//examples"], cwd=examples.root, capture_output=True,
            text=True, timeout=60, env=mk_env(tmp_path / "A", env), check=False,
        )
        assert proc.stdout.rstrip().endswith("loaded: False False"), proc.stdout + proc.stderr


def test_keygen_writes_a_key_pair(tmp_path: Path) -> None:
    result = subprocess.run([MK, "cache", "keygen", str(tmp_path / "ci-1")], capture_output=True, text=True,
                            timeout=60, check=False, env=mk_env(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    secret, public = tmp_path / "ci-1.key", tmp_path / "ci-1.pub"
    assert os.stat(secret).st_mode & 0o777 == 0o600
    line = public.read_text().strip()
    assert line.startswith("ci-1:") and line in result.stdout
    assert parse_public_key(line).name == "ci-1"
    again = subprocess.run([MK, "cache", "keygen", str(tmp_path / "ci-1")], capture_output=True, text=True,
                           timeout=60, check=False, env=mk_env(tmp_path / "cache"))
    assert (again.returncode, again.stderr) == (
        2, f"error: mk cache keygen: {secret} already exists; not overwriting a key\n")
    assert public.read_text().strip() == line
