"""Unit tests of the tree model: building, checking, merging, encoding, listing and comparing."""

from __future__ import annotations

from pathlib import Path

import pytest

from mk.cache import tree_diff, tree_listing
from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree, TreeError, merge, normalise


def file(path: str, digest: str = "a" * 64, mode: int = 0o644) -> Entry:
    return Entry(path, Kind.FILE, mode, digest=digest, size=1)


def test_build_sorts_and_adds_parent_directories() -> None:
    tree = Tree.build([file("usr/bin/tool"), file("etc/motd")])
    assert [e.path for e in tree.entries] == ["etc", "etc/motd", "usr", "usr/bin", "usr/bin/tool"]
    assert all(e.kind is Kind.DIR and e.mode == 0o755 for e in tree.entries if e.path in ("etc", "usr"))


def test_encode_decode_round_trip_and_digest_is_stable() -> None:
    tree = Tree.build([file("a"), Entry("b", Kind.SYMLINK, 0o777, target="a"),
                       Entry("dev/null", Kind.CHAR, 0o666, major=1, minor=3)])
    assert Tree.decode(tree.encode()) == tree
    assert Tree.build(reversed(tree.entries)).encode() == tree.encode()


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", ".", ""])
def test_normalise_refuses_escapes(path: str) -> None:
    with pytest.raises(TreeError):
        normalise(path)


def test_normalise_cleans_dots_and_slashes() -> None:
    assert normalise("./usr//bin/") == "usr/bin"


def test_entry_under_a_symlink_is_refused() -> None:
    with pytest.raises(TreeError, match="lies under 'etc', which is a symlink"):
        Tree.build([Entry("etc", Kind.SYMLINK, 0o777, target="/tmp"), file("etc/passwd")])


def test_relative_symlink_escaping_the_root_is_refused() -> None:
    with pytest.raises(TreeError, match="escapes the tree"):
        Tree.build([Entry("a/link", Kind.SYMLINK, 0o777, target="../../etc/passwd")])
    Tree.build([Entry("a/link", Kind.SYMLINK, 0o777, target="../etc/passwd")])  # stays inside
    Tree.build([Entry("a/link", Kind.SYMLINK, 0o777, target="/etc/passwd")])  # resolves in the image


def test_hardlink_must_point_at_a_file_in_the_tree() -> None:
    with pytest.raises(TreeError, match="not a file in the tree"):
        Tree.build([Entry("b", Kind.HARDLINK, 0o644, target="missing")])


def test_lookup_follows_symlinks_as_the_booted_system_would() -> None:
    libc = file("usr/lib/x86_64-linux-gnu/libc.so.6", "c" * 64)
    tree = Tree.build([
        libc, Entry("lib", Kind.SYMLINK, 0o777, target="usr/lib"),
        Entry("lib64/ld-linux-x86-64.so.2", Kind.SYMLINK, 0o777, target="../lib/x86_64-linux-gnu/ld.so"),
        file("usr/lib/x86_64-linux-gnu/ld.so", "d" * 64),
        Entry("etc/os-release", Kind.SYMLINK, 0o777, target="/usr/lib/os-release"),
        file("usr/lib/os-release", "e" * 64),
        Entry("usr/lib/x86_64-linux-gnu/libc.so", Kind.HARDLINK, 0o644, target="usr/lib/x86_64-linux-gnu/libc.so.6"),
        Entry("loop/a", Kind.SYMLINK, 0o777, target="b"), Entry("loop/b", Kind.SYMLINK, 0o777, target="a"),
    ])
    assert tree.lookup("lib/x86_64-linux-gnu/libc.so.6") == libc  # through a symlinked folder
    assert tree.lookup("/lib64/ld-linux-x86-64.so.2") == tree.lookup("usr/lib/x86_64-linux-gnu/ld.so")
    os_release = tree.lookup("usr/lib/os-release")
    assert os_release is not None and tree.lookup("etc/os-release") == os_release  # an absolute link
    assert tree.lookup("usr/lib/x86_64-linux-gnu/libc.so") == libc  # a hard link is the file it links to
    assert tree.lookup("lib") == tree.lookup("usr/lib") and tree.lookup("usr/lib/../lib/x86_64-linux-gnu") is not None
    assert tree.lookup("loop/a") is None  # links that go round
    assert tree.lookup("lib/missing.so") is None


def test_merge_later_layer_wins_and_removals_apply() -> None:
    lower = Tree.build([file("etc/motd", "1" * 64), file("usr/share/doc/x"), file("usr/bin/a")])
    upper = Tree.build([file("etc/motd", "2" * 64)])
    merged = merge([lower, upper], remove=["/usr/share/**"])
    paths = {e.path: e for e in merged.entries}
    assert paths["etc/motd"].digest == "2" * 64
    assert "usr/share/doc/x" not in paths and "usr/share/doc" not in paths
    assert "usr/share" in paths and "usr/bin/a" in paths


def test_merge_file_over_directory_hides_its_children() -> None:
    lower = Tree.build([file("opt/app/bin"), file("opt/app/lib")])
    upper = Tree.build([Entry("opt/app", Kind.SYMLINK, 0o777, target="/usr/lib/app")])
    merged = merge([lower, upper])
    assert [e.path for e in merged.entries] == ["opt", "opt/app"]


def test_merge_drops_hardlinks_whose_target_was_removed() -> None:
    tree = Tree.build([file("a"), Entry("b", Kind.HARDLINK, 0o644, target="a")])
    assert [e.path for e in merge([tree], remove=["a"]).entries] == []


def test_decode_refuses_unsorted_or_malformed_manifests(tmp_path: Path) -> None:
    with pytest.raises(TreeError):
        Tree.decode(b"\x93garbage")
    tree = Tree.build([file("b"), file("a")])
    import msgpack

    unsorted = msgpack.packb([1, [e.encode() for e in reversed(tree.entries)]])
    with pytest.raises(TreeError, match="not sorted"):
        Tree.decode(unsorted)


def test_blob_reader_streams_and_verifies(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    digest = cas.put_bytes(b"x" * 3_000_000)
    with cas.open(digest) as reader:
        assert reader.read() == b"x" * 3_000_000
    blob = cas.path(digest)
    blob.chmod(0o644)
    import zstandard

    blob.write_bytes(zstandard.ZstdCompressor().compress(b"y" * 3_000_000))
    with pytest.raises(Exception, match="corrupt"), cas.open(digest) as reader:
        reader.read()


def test_diff_of_an_entry_that_changed_kind_says_only_that() -> None:
    old = Tree.build([Entry("etc/x", Kind.FILE, 0o644, digest="ab" * 32, size=3), Entry("run/p", Kind.FIFO, 0o600)])
    new = Tree.build([Entry("etc/x", Kind.SYMLINK, 0o777, target="y"), Entry("run/p", Kind.FIFO, 0o600, uid=7)])
    changes = tree_diff.compare(old, new)
    assert tree_diff.lines(changes) == ["~ /etc/x: kind file -> symlink", "~ /run/p: owner 0/0 -> 7/0"]
    assert tree_diff.content_changes(changes) == []
    assert tree_diff.summary(changes, old, new) == "0 added, 0 removed, 2 changed; files 3 B -> 0 B"
    assert tree_listing.lines(new.entries[-1:]) == ["prw------- 7/0 0 -            /run/p"]


@pytest.mark.parametrize("path", ["a", "a/b", "usr/bin/x", "...", "a/...", "..a", ".a", "a/.b", "x/..y", ".../b",
                                  "./a", "a/./b", "a/../b", "..", "a//b", "/a", "a/", "a\0b", "", ".", "a/.", "a/.."])
def test_the_check_takes_a_path_as_normalised_exactly_when_normalise_leaves_it(path: str) -> None:
    try:
        unchanged = normalise(path) == path
    except TreeError:
        unchanged = False
    parents = path.split("/")[:-1] if unchanged else []
    folders = [Entry("/".join(parents[:n]), Kind.DIR, 0o755) for n in range(1, len(parents) + 1)]
    refused = False
    try:
        Tree((*folders, Entry(path, Kind.FILE, 0o644))).check()
    except TreeError:
        refused = True
    assert refused == (not unchanged)
