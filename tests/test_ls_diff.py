"""`mk ls` (what a tree holds, like `tar tvf`) and `mk diff` (two trees compared)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import Workspace, WorkspaceFactory, fake_diffoscope, parse_summary

from mk.cache.cas import digest_bytes, digest_file

MOTD, MOTD2, TOOL = "hello\n", "hello, you\n", "#!/bin/sh\necho tool\n"
LAYER = textwrap.dedent("""
    layer(
        name = "l",
        files = {"/etc/motd": "motd", "/usr/bin/tool": "tool.sh"},
        directories = ["/var/empty"],
        modes = {"/usr/bin/tool": "4755", "/dev/null": "0666"},
        owners = {"/var/empty": "100:65534"},
        symlinks = {"/bin": "usr/bin"},
        devices = {"/dev/null": "c 1 3", "/dev/sda": "b 8 0"},
    )
    genrule(name = "g", outs = ["g.txt"], cmd = "echo > $@")
""")


@pytest.fixture
def ws(workspace: WorkspaceFactory) -> Workspace:
    return workspace({"p/BUILD": LAYER, "p/motd": MOTD, "p/tool.sh": TOOL})


def short(text: str) -> str:
    return digest_bytes(text.encode())[:12]


def tree_digest(ws: Workspace, name: str) -> str:
    """The digest of a layer's tree manifest, as placed in mk-out."""
    return digest_file(ws.root / f"mk-out/p/{name}.tree")[:12]


def test_ls_lists_a_layer_like_tar_tvf(ws: Workspace) -> None:
    result = ws.mk("ls", "//p:l")
    assert result.code == 0, result.err
    assert result.out == textwrap.dedent(f"""\
        lrwxrwxrwx 0/0         0 -            /bin -> usr/bin
        drwxr-xr-x 0/0         0 -            /dev
        crw-rw-rw- 0/0       1,3 -            /dev/null
        brw------- 0/0       8,0 -            /dev/sda
        drwxr-xr-x 0/0         0 -            /etc
        -rw-r--r-- 0/0         6 {short(MOTD)} /etc/motd
        drwxr-xr-x 0/0         0 -            /usr
        drwxr-xr-x 0/0         0 -            /usr/bin
        -rwsr-xr-x 0/0        20 {short(TOOL)} /usr/bin/tool
        drwxr-xr-x 0/0         0 -            /var
        drwxr-xr-x 100/65534   0 -            /var/empty
    """)
    # The build's own report goes to stderr, so that stdout is the listing alone.
    assert parse_summary(result.err).targets == 1


def test_ls_lists_hard_links_as_tar_does(workspace: WorkspaceFactory) -> None:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = tarfile.TarInfo("bin/busybox")
        data.size, data.mode = 3, 0o755
        archive.addfile(data, io.BytesIO(b"bb\n"))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname, link.mode = tarfile.LNKTYPE, "bin/busybox", 0o755
        archive.addfile(link)
    ws = workspace({"p/BUILD": 'layer(name = "l", tars = ["base.tar"])\n', "p/base.tar": buffer.getvalue()})
    result = ws.mk("ls", "//p:l")
    assert result.code == 0, result.err
    busybox = short("bb\n")
    assert result.out == textwrap.dedent(f"""\
        drwxr-xr-x 0/0 0 -            /bin
        -rwxr-xr-x 0/0 3 {busybox} /bin/busybox
        hrwxr-xr-x 0/0 0 -            /bin/sh link to /bin/busybox
    """)


def test_ls_with_path_prefixes(ws: Workspace) -> None:
    result = ws.mk("ls", "//p:l", "/dev", "var/empty")
    assert result.code == 0, result.err
    assert result.out == textwrap.dedent("""\
        drwxr-xr-x 0/0         0 -            /dev
        crw-rw-rw- 0/0       1,3 -            /dev/null
        brw------- 0/0       8,0 -            /dev/sda
        drwxr-xr-x 100/65534   0 -            /var/empty
    """)
    # A prefix is a whole path: /us does not list /usr.
    missing = ws.mk("ls", "//p:l", "/us")
    assert (missing.code, missing.out) == (2, "")
    assert missing.err.splitlines()[-1] == "error: mk ls: //p:l has nothing at /us (did you mean '/usr'?)"


def test_ls_of_a_target_without_a_tree(ws: Workspace) -> None:
    result = ws.mk("ls", "//p:g")
    assert (result.code, result.out) == (2, "")
    assert result.err.splitlines()[-1] == ("error: mk ls: //p:g (genrule) has no tree; mk ls takes a target that "
                                           "provides one (a layer, rootfs, deb_packages, kernel or image)")


def test_ls_of_several_targets(ws: Workspace) -> None:
    result = ws.mk("ls", "//p:all")
    assert (result.code, result.out) == (2, "")
    assert result.err.splitlines()[-1] == "error: mk ls needs exactly one target; '//p:all' matches 2"


def test_ls_of_a_target_that_does_not_exist(ws: Workspace) -> None:
    result = ws.mk("ls", "//p:ll")
    assert (result.code, result.out) == (2, "")
    assert "error: target '//p:ll' does not exist (did you mean '//p:l'?)\n" in result.err


# ---- mk diff ------------------------------------------------------------------------------------

TWO_LAYERS = textwrap.dedent("""
    layer(
        name = "a",
        files = {"/etc/motd": "motd", "/etc/gone": "motd", "/usr/bin/tool": "tool.sh"},
        symlinks = {"/bin": "usr/bin"},
        devices = {"/dev/sda": "b 8 0"},
    )
    layer(
        name = "b",
        files = {"/etc/motd": "motd2", "/etc/new": "motd", "/usr/bin/tool": "tool.sh"},
        modes = {"/usr/bin/tool": "0755"},
        owners = {"/etc/motd": "1:2"},
        symlinks = {"/bin": "usr/sbin"},
        devices = {"/dev/sda": "b 8 1"},
    )
    genrule(name = "g", outs = ["g.txt"], cmd = "echo > $@")
""")


@pytest.fixture
def two(workspace: WorkspaceFactory) -> Workspace:
    return workspace({"p/BUILD": TWO_LAYERS, "p/motd": MOTD, "p/motd2": MOTD2, "p/tool.sh": TOOL})


def no_diffoscope(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH holds no diffoscope."""
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    return {"PATH": str(empty)}


def test_diff_of_two_layers(two: Workspace, tmp_path: Path) -> None:
    result = two.mk("diff", "//p:a", "//p:b", env=no_diffoscope(tmp_path))
    assert result.code == 0, result.err
    assert result.out == textwrap.dedent(f"""\
        --- //p:a tree {tree_digest(two, "a")}
        +++ //p:b tree {tree_digest(two, "b")}
        ~ /bin: link target usr/bin -> usr/sbin
        ~ /dev/sda: device 8,0 -> 8,1
        - -rw-r--r-- 0/0 6 {short(MOTD)} /etc/gone
        ~ /etc/motd: content 6 B -> 11 B ({short(MOTD)} -> {short(MOTD2)}); owner 0/0 -> 1/2
        + -rw-r--r-- 0/0 6 {short(MOTD)} /etc/new
        ~ /usr/bin/tool: mode 0644 -> 0755
        mk diff: 1 added, 1 removed, 4 changed; files 32 B -> 37 B
    """)
    assert result.err.splitlines()[-1] == ("mk diff: diffoscope is not installed, so changed files are compared by "
                                           "digest only (on Debian: apt-get install diffoscope)")


def test_diff_of_a_tree_with_itself(two: Workspace) -> None:
    result = two.mk("diff", "//p:a", "//p:a")
    assert result.code == 0, result.err
    digest = tree_digest(two, "a")
    assert result.out == f"--- //p:a tree {digest}\n+++ //p:a tree {digest}\nmk diff: the trees are identical\n"


def test_diff_shows_diffoscope_for_changed_files(two: Workspace, tmp_path: Path) -> None:
    result = two.mk("diff", "//p:a", "//p:b", env=fake_diffoscope(tmp_path / "bin"))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    # After the changed entries, before the summary: diffoscope on the two versions of /etc/motd.
    assert lines[-3:] == ["a/etc/motd: hello", "b/etc/motd: hello, you", "mk diff: 1 added, 1 removed, 4 changed; "
                          "files 32 B -> 37 B"]
    assert "diffoscope" not in result.err


def test_diff_of_a_target_without_a_tree(two: Workspace) -> None:
    result = two.mk("diff", "//p:a", "//p:g")
    assert (result.code, result.out) == (2, "")
    assert result.err.splitlines()[-1] == ("error: mk diff: //p:g (genrule) has no tree; mk diff takes a target that "
                                           "provides one (a layer, rootfs, deb_packages, kernel or image)")


# ---- one target between two builds --------------------------------------------------------------


def test_diff_of_one_target_against_its_previous_build(two: Workspace, tmp_path: Path) -> None:
    env = no_diffoscope(tmp_path)
    two.build("//p:a")
    before = tree_digest(two, "a")
    two.write("p/motd", MOTD2)
    two.build("//p:a")  # any build records the trees it made: mk build, mk image, mk ls, mk diff
    after = tree_digest(two, "a")
    expected = textwrap.dedent(f"""\
        --- //p:a tree {before} (previous build)
        +++ //p:a tree {after} (this build)
        ~ /etc/gone: content 6 B -> 11 B ({short(MOTD)} -> {short(MOTD2)})
        ~ /etc/motd: content 6 B -> 11 B ({short(MOTD)} -> {short(MOTD2)})
        mk diff: 0 added, 0 removed, 2 changed; files 32 B -> 42 B
    """)
    result = two.mk("diff", "//p:a", env=env)
    assert (result.code, result.out) == (0, expected), result.err
    # Asked again, the answer is the same: the last change of the tree.
    assert two.mk("diff", "//p:a", env=env).out == expected

    # An edit made and built by `mk diff` itself is compared with the build before.
    two.write("p/motd", MOTD)
    result = two.mk("diff", "//p:a", env=env)
    assert result.code == 0, result.err
    assert result.out.splitlines()[:2] == [f"--- //p:a tree {after} (previous build)",
                                           f"+++ //p:a tree {before} (this build)"]


def test_diff_of_one_target_never_built_differently(two: Workspace) -> None:
    result = two.mk("diff", "//p:a")
    assert (result.code, result.out) == (2, "")
    assert result.err.splitlines()[-1] == (
        f"error: mk diff: no earlier build of //p:a made another tree than this one ({tree_digest(two, 'a')}); "
        "change what it is made of and build it again, or name a second target to compare with")


def test_diff_of_one_target_whose_previous_tree_was_collected(two: Workspace) -> None:
    two.build("//p:a")
    two.write("p/motd", MOTD2)
    two.build("//p:a")
    assert two.mk("cache", "gc", "--max-size", "1").code == 0
    result = two.mk("diff", "//p:a")
    assert result.code == 2
    assert result.err.splitlines()[-1].startswith("error: mk diff: the tree of //p:a's previous build (")
    assert result.err.splitlines()[-1].endswith(") is no longer in the cache (`mk cache gc` removes old entries)")
