"""Rules talk through typed providers, and attributes are typed values: a wrong dependency or a
malformed value is an analysis error that names the file, line, both targets and what was needed."""

from __future__ import annotations

import textwrap

from conftest import WorkspaceFactory
from test_loading_errors import fails

# An offline image: its "kernel" and "busybox" are one small file.
IMAGE_PARTS = """
layer(name = "base", files = {"/usr/bin/busybox": "blob", "/boot/vmlinuz-6.1.0-mk": "blob"})
kernel(name = "k", packages = ":base")
"""


def package(text: str) -> dict[str, str]:
    return {"pkg/BUILD": textwrap.dedent(IMAGE_PARTS + text).lstrip("\n"), "pkg/blob": "data\n"}


def test_a_dependency_without_the_required_provider_names_both_targets(workspace: WorkspaceFactory) -> None:
    ws = workspace(package('image(name = "vm", kernel = ":base", base = [":base"])\n'))
    assert fails(ws, "//pkg:vm") == (
        "pkg/BUILD:3:29: error: image //pkg:vm: attribute 'kernel' needs a target that provides KernelInfo; "
        "//pkg:base (layer) provides TreeInfo\n"
    )


def test_a_target_that_gives_only_files_is_named_as_such(workspace: WorkspaceFactory) -> None:
    ws = workspace(package('write_file(name = "w", out = "w.txt")\nrootfs(name = "r", layers = [":w"])\n'))
    assert fails(ws, "//pkg:r") == (
        "pkg/BUILD:4:30: error: rootfs //pkg:r: attribute 'layers' needs a target that provides TreeInfo; "
        "//pkg:w (write_file) provides only files\n"
    )


def test_a_source_file_where_a_tree_is_needed(workspace: WorkspaceFactory) -> None:
    ws = workspace(package('cpio(name = "c", src = "blob")\n'))
    assert fails(ws, "//pkg:c") == (
        "pkg/BUILD:3:24: error: cpio //pkg:c: attribute 'src' needs a target that provides TreeInfo; "
        "'blob' is a file, which provides nothing\n"
    )


def test_the_kernel_provider_is_accepted(workspace: WorkspaceFactory) -> None:
    ws = workspace(package('image(name = "vm", kernel = ":k", base = [":base"])\n'))
    result = ws.mk("build", "//pkg:vm")
    assert result.code == 0, result.err
    assert result.out.splitlines()[:5] == [f"mk-out/pkg/vm/{name}" for name in
                                           ("kernel", "initrd.img", "cmdline", "sbom.spdx.json", "manifest.json")]


def test_an_enum_attribute_lists_its_values(workspace: WorkspaceFactory) -> None:
    ws = workspace(package('tar(name = "t", src = ":base", compression = "lz4")\n'))
    assert fails(ws, "//pkg:t") == (
        "pkg/BUILD:3:1: error: tar //pkg:t: attribute 'compression': 'lz4' is not one of "
        "'none', 'gzip', 'zstd', 'xz'\n"
    )


def test_a_structured_attribute_names_the_bad_entry(workspace: WorkspaceFactory) -> None:
    ws = workspace(package('layer(name = "l", devices = {"/dev/big": "c 4294967296 1"})\n'))
    assert fails(ws, "//pkg:l") == (
        "pkg/BUILD:3:1: error: layer //pkg:l: attribute 'devices': device '/dev/big': the major must be at most "
        "4095 and the minor at most 1048575, got 'c 4294967296 1'\n"
    )


def test_an_out_of_range_uid_is_refused_where_it_is_written(workspace: WorkspaceFactory) -> None:
    ws = workspace(package('layer(name = "l", users = ["x:4294967297:0::/:/bin/sh"])\n'))
    assert fails(ws, "//pkg:l") == (
        "pkg/BUILD:3:1: error: layer //pkg:l: attribute 'users': uid of user 'x' '4294967297' is not a number "
        "from 0 to 4294967295\n"
    )


def test_a_path_declared_twice_in_a_layer_is_an_error(workspace: WorkspaceFactory) -> None:
    ws = workspace(package('layer(name = "l", directories = ["/a"], symlinks = {"/a": "b"})\n'))
    assert fails(ws, "//pkg:l") == (
        "pkg/BUILD:3:1: error: layer //pkg:l: '/a' is declared in both 'directories' and 'symlinks'\n"
    )


def test_a_source_date_epoch_no_initramfs_can_hold_is_refused(workspace: WorkspaceFactory) -> None:
    ws = workspace(package('write_file(name = "w", out = "w.txt")\n'), toml="source_date_epoch = 4294967296\n")
    assert fails(ws, "//pkg:w") == "mk.toml:1:1: error: source_date_epoch must be at most 4294967295, got 4294967296\n"
