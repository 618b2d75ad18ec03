"""Fault injection: one random byte flipped in one cache file, over and over.

Each round flips a byte in one file of one kind (a CAS blob, a blob that only a tree references,
an action result, the cached graph, the stat cache, the explain log), then builds again. Every
round must end in the right bytes (a rebuild where needed) or in a clear error that names the
problem; never in wrong bytes, and never in an exception that is not a user-facing error.
"""

from __future__ import annotations

import random
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Workspace, WorkspaceFactory

from mk.cache.local import LocalCache
from mk.cache.tree import Tree
from mk.engine.build import BuildOptions, build
from mk.engine.errors import MkError
from mk.engine.workspace import find_workspace
from mk.rules.families import registry

ROUNDS = 240  # 40 for each kind of file
BUILD = textwrap.dedent("""
    genrule(name = "gen", srcs = ["in.txt"], outs = ["gen.txt"], cmd = "tr a-z A-Z < $< > $@")
    layer(name = "etc", files = {"/etc/motd": "motd", "/etc/gen": ":gen"})
    cpio(name = "initramfs", src = ":etc")
    tar(name = "tarball", src = ":etc", compression = "gzip")
""").lstrip("\n")
TARGETS = ["//pkg:initramfs", "//pkg:tarball", "//pkg:etc"]


def build_once(ws: Workspace) -> dict[str, bytes] | str:
    """The outputs of a build, or the text of the user-facing error it stopped with."""
    workspace = find_workspace(ws.root, registry().all_settings())
    try:
        result = build(workspace, LocalCache(ws.cache_dir), TARGETS, BuildOptions(jobs=2), registry())
    except MkError as e:
        return str(e)
    if result.schedule.failures:
        return "\n".join(str(error) for _, error in result.schedule.failures)
    return {path: (ws.root / path).read_bytes() for path in result.outputs}


def tree_member_blobs(ws: Workspace) -> list[Path]:
    tree = Tree.decode((ws.root / "mk-out/pkg/etc.tree").read_bytes()) if (ws.root / "mk-out/pkg/etc.tree").exists() \
        else None
    digests = [e.digest for e in tree.files()] if tree else []
    return [ws.cache_dir / "cas" / d[:2] / d for d in digests]


def files_of(ws: Workspace, pattern: str) -> Callable[[], list[Path]]:
    return lambda: sorted(p for p in ws.cache_dir.glob(pattern) if p.is_file() and not p.name.startswith(".tmp-"))


def test_random_flips_in_every_kind_of_cache_file(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": BUILD, "pkg/in.txt": "hello\n", "pkg/motd": "motd\n"})
    # The input alternates, so that actions run again and read their input blobs and the blobs
    # their trees reference; mk-out is removed before each build, so every output is read back.
    inputs = ["hello\n", "world\n"]
    expected: dict[str, dict[str, bytes]] = {}
    for text in inputs:
        ws.write("pkg/in.txt", text)
        built = build_once(ws)
        assert isinstance(built, dict), built
        expected[text] = built
    kinds: dict[str, Callable[[], list[Path]]] = {
        "CAS blob": files_of(ws, "cas/*/*"),
        "tree-member blob": lambda: tree_member_blobs(ws),
        "action result": files_of(ws, "ac/*/*"),
        "graph cache": files_of(ws, "graphs/*.pickle"),
        "stat cache": files_of(ws, "stat/*"),
        "explain log": files_of(ws, "explain/*"),
    }
    chance = random.Random(20261130)  # a fixed seed: a failure can be replayed
    outcomes: dict[str, int] = {}
    for round_number in range(ROUNDS):
        kind = list(kinds)[round_number % len(kinds)]
        candidates = [p for p in kinds[kind]() if p.stat().st_size > 0]
        if not candidates:  # (a previous round removed the last one: rebuild to bring it back)
            build_once(ws)
            candidates = [p for p in kinds[kind]() if p.stat().st_size > 0]
        victim = chance.choice(candidates)
        data = bytearray(victim.read_bytes())
        offset = chance.randrange(len(data))
        data[offset] ^= 1 << chance.randrange(8)
        victim.chmod(0o644)
        victim.write_bytes(bytes(data))
        text = inputs[round_number % 2]
        ws.write("pkg/in.txt", text)
        shutil.rmtree(ws.root / "mk-out", ignore_errors=True)
        where = f"round {round_number}: {kind} {victim.name} byte {offset}"
        try:
            got = build_once(ws)
        except Exception as e:  # anything but a user-facing error is a defect
            pytest.fail(f"{where}: {type(e).__name__}: {e}")
        if isinstance(got, str):
            assert got.strip() and "Traceback" not in got, where
            outcomes["clear error"] = outcomes.get("clear error", 0) + 1
            again = build_once(ws)  # and the next build recovers
            assert again == expected[text], f"{where}: after the error {got!r}, the next build gave {again!r}"
        else:
            assert got == expected[text], f"{where}: wrong bytes"
            outcomes["right bytes"] = outcomes.get("right bytes", 0) + 1
    assert sum(outcomes.values()) == ROUNDS, outcomes
