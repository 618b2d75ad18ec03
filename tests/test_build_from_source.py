"""busybox built from Debian's source package (//examples:busybox_from_source) against the mirror:
the same bytes from cold caches in two workspaces at different paths, and `mk build --check`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import MIRROR_SECONDS, MK, mk_env, parse_summary, run_within

from mk.cache.cas import ContentStore
from mk.cache.tree import Tree

REPO = Path(__file__).resolve().parent.parent
TARGET = "//examples:busybox_from_source"
pytestmark = pytest.mark.mirror


def build_in(root: Path, cache: Path, *options: str) -> str:
    """`mk build TARGET` in a copy of the examples at `root` with its own cache; its stderr."""
    if not root.exists():
        root.mkdir(parents=True)
        (root / "mk.toml").write_text((REPO / "mk.toml").read_text())
        shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("mk-out"))
    result = run_within([MK, "build", *options, TARGET], MIRROR_SECONDS,
                        f"`mk build {' '.join(options)} {TARGET}` (fetches the build toolchain and busybox's source "
                        "from the mirror, then compiles it)", cwd=root, env=mk_env(cache))
    assert result.returncode == 0, result.stderr[-3000:]
    parse_summary(result.stdout)
    return result.stderr


@pytest.mark.timeout(3 * MIRROR_SECONDS + 60)
def test_busybox_from_source_is_the_same_from_cold_caches_at_two_paths(tmp_path: Path) -> None:
    trees = []
    for name in ("a", "b/deeper"):
        root, cache = tmp_path / name, tmp_path / f"cache-{name.replace('/', '-')}"
        build_in(root, cache)
        manifest = (root / "mk-out/examples/busybox_from_source.tree").read_bytes()
        tree = Tree.decode(manifest)
        busybox = next(e for e in tree.entries if e.path == "usr/bin/busybox")
        binary = ContentStore(cache).read_bytes(busybox.digest)
        assert binary.startswith(b"\x7fELF") and b"/lib64/ld-linux" not in binary  # static: no loader named
        trees.append((manifest, binary))
    assert trees[0] == trees[1]
    # Built again ignoring the cache, it is the same again.
    build_in(tmp_path / "a", tmp_path / "cache-a", "--check")
