"""The segmented initrd: how the root is cut into segments, and that the concatenation is rebuilt
from the one segment an edit touches, with the same bytes whatever was cached. Offline."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import WorkspaceFactory, read_events
from debrepo import Repo
from test_image import bookworm, busybox_deb, image_workspace, initrd_archives, kernel_deb, mk, unpack_initrd

from mk.cache.tree import Entry, Kind, Tree, merge
from mk.rules.images.initrd import split


def file(path: str, content: str, mode: int = 0o644) -> Entry:
    return Entry(path, Kind.FILE, mode, digest=content, size=len(content))


def directory(path: str, mode: int = 0o755) -> Entry:
    return Entry(path, Kind.DIR, mode)


def paths(tree: Tree) -> list[str]:
    return [e.path for e in tree.entries]


def test_a_file_a_later_layer_replaces_is_only_in_that_layers_segment() -> None:
    low = Tree.build([file("etc/a", "old"), file("etc/kept", "kept")])
    high = Tree.build([file("etc/a", "new")])
    root = merge([low, high])
    first, second, own = split(root, [low, high])
    assert paths(first) == ["etc", "etc/kept"]
    assert paths(second) == ["etc", "etc/a"] and second.entries[1].digest == "new"
    assert paths(own) == []


def test_the_images_own_entries_are_the_last_segment() -> None:
    layer = Tree.build([file("usr/bin/busybox", "bb", 0o755)])
    root = merge([layer, Tree.build([file("init", "script", 0o755), directory("tmp", 0o1777)])])
    (packages, own) = split(root, [layer])
    assert paths(packages) == ["usr", "usr/bin", "usr/bin/busybox"]
    assert paths(own) == ["init", "tmp"]


def test_directories_repeat_with_the_roots_metadata_and_nothing_else_does() -> None:
    low = Tree.build([directory("etc", 0o755), file("etc/a", "a")])
    high = Tree.build([directory("etc", 0o700), file("etc/b", "b")])
    root = merge([low, high])
    segments = split(root, [low, high])
    # The later layer made /etc 0700: the earlier segment creates it so already, as unpacking
    # the later one again would leave it.
    assert [e for s in segments for e in s.entries if e.path == "etc"] == [directory("etc", 0o700)] * 2
    others = sorted(e for s in segments for e in s.entries if e.kind is not Kind.DIR)
    assert others == sorted(e for e in root.entries if e.kind is not Kind.DIR)


def test_a_path_the_root_no_longer_has_is_in_no_segment() -> None:
    low = Tree.build([file("usr/share/doc/x", "doc"), file("usr/bin/x", "x")])
    root = merge([low], remove=["/usr/share/doc"])
    (segment, own) = split(root, [low])
    assert paths(segment) == ["usr", "usr/bin", "usr/bin/x", "usr/share"] and paths(own) == []


def test_a_hard_link_goes_with_the_file_it_links_to() -> None:
    low = Tree.build([file("bin/x", "x"), Entry("bin/y", Kind.HARDLINK, 0o755, target="bin/x")])
    high = Tree.build([file("bin/x", "new x")])
    root = merge([low, high])
    first, second, _ = split(root, [low, high])
    assert paths(first) == []  # the link names the later layer's file, so it is unpacked with it
    assert paths(second) == ["bin", "bin/x", "bin/y"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return bookworm(tmp_path_factory.mktemp("segments") / "repo", kernel_deb(), busybox_deb())


def test_a_one_file_edit_rewrites_its_segment_and_the_concatenation_only(workspace: WorkspaceFactory, repo: Repo,
                                                                          tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    cache, initrd, events = tmp_path / "cache", root / "mk-out/img/box/initrd.img", tmp_path / "events.jsonl"
    assert mk(root, cache, "image", "//img:box").returncode == 0
    first = initrd.read_bytes()
    motd = root / "img/motd"
    motd.write_text("edited\n")
    result = mk(root, cache, "image", "//img:box", "--json-events", str(events))
    assert result.returncode == 0, result.stderr
    executed = sorted((str(e["mnemonic"]), str(e["outputs"])) for e in read_events(events) if e["status"] == "executed")
    assert [m for m, _ in executed] == ["ImageRoot", "Initrd", "InitrdSegment", "Layer", "Manifest"]
    # //img:box's base is busybox, motd, app; then the kernel's modules and the image's own files.
    assert ("InitrdSegment", str(["img/box/initrd.d/01.cpio.zst"])) in executed
    before, after = initrd_archives_of(first, tmp_path / "first.img"), initrd_archives(initrd)
    assert len(before) == len(after) == 5
    assert [i for i, (old, new) in enumerate(zip(before, after, strict=True)) if old != new] == [1]
    unpack_initrd(initrd, tmp_path / "unpacked")
    assert (tmp_path / "unpacked/etc/motd").read_text() == "edited\n"
    motd.write_text("hi\n")
    assert mk(root, cache, "image", "//img:box").returncode == 0
    assert initrd.read_bytes() == first


def initrd_archives_of(data: bytes, path: Path) -> list[bytes]:
    path.write_bytes(data)
    return initrd_archives(path)


def test_clean_builds_in_two_folders_make_the_same_initrd(workspace: WorkspaceFactory, repo: Repo,
                                                          tmp_path: Path) -> None:
    made = []
    for name in ("one", "two"):
        root = image_workspace(workspace, repo, name=name)
        result = mk(root, tmp_path / f"cache-{name}", "image", "//img:box")
        assert result.returncode == 0, result.stderr
        made.append((root / "mk-out/img/box/initrd.img").read_bytes())
    assert made[0] == made[1]


def listing(root: Path) -> dict[str, tuple[int, str]]:
    """Each path under `root`: its mode, and its content or link text (directories: nothing)."""
    found = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        shown = os.readlink(path) if path.is_symlink() else "" if path.is_dir() else path.read_bytes().hex()
        found[str(path.relative_to(root))] = (mode, shown)
    return found


def test_the_segments_unpacked_in_order_are_the_root_the_tar_holds(workspace: WorkspaceFactory, repo: Repo,
                                                                     tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "image", "//img:box", "--format", "tar")
    assert result.returncode == 0, result.stderr
    out = root / "mk-out/img/box"
    unpack_initrd(out / "initrd.img", tmp_path / "initrd")
    (tmp_path / "tar").mkdir()
    subprocess.run(["tar", "-xpf", out / "rootfs.tar", "-C", tmp_path / "tar"], check=True)
    assert listing(tmp_path / "initrd") == listing(tmp_path / "tar")
