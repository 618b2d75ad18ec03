"""Image formats of //examples:sshd, checked by each filesystem's own tools (from the host, so
that mk's sandboxed toolchain is not judging its own work). Needs the Debian mirror."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import MIRROR_SECONDS, MK, mk_env, require, run_within

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.mirror
ROOT_FILESYSTEMS = ("squashfs", "erofs", "ext4")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mk-out/examples/sshd/ of a copy of the examples, with every root filesystem format."""
    root = tmp_path_factory.mktemp("formats")
    (root / "mk.toml").write_text((REPO / "mk.toml").read_text())
    subprocess.run(["cp", "-r", str(REPO / "examples"), str(root / "examples")], check=True)
    formats = [arg for name in (*ROOT_FILESYSTEMS, "kernel+squashfs", "tar") for arg in ("--format", name)]
    result = run_within([MK, "image", "//examples:sshd", *formats], MIRROR_SECONDS, "`mk image` of every format",
                        cwd=root, env=mk_env(root / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "mk-out/examples/sshd"


def check(*command: str) -> str:
    require(command[0])
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}: {result.returncode}\n{result.stdout}{result.stderr}"
    return result.stdout


def tar_listing(tar: Path) -> set[tuple[str, str, int, int]]:
    """(path, type, uid, gid) of each member."""
    with tarfile.open(tar) as archive:
        return {(m.name.rstrip("/"), "d" if m.isdir() else "l" if m.issym() else "f", m.uid, m.gid)
                for m in archive.getmembers() if m.name not in ("", ".")}


def test_ext4_passes_fsck(built: Path) -> None:
    check("fsck.ext4", "-fn", str(built / "root.ext4"))
    stat = check("debugfs", "-R", "stat /usr/sbin/sshd", str(built / "root.ext4"))
    # Every time is SOURCE_DATE_EPOCH (0), or 1 where mke2fs reads 0 as unset.
    assert "ctime: 0x00000000:00000000" in stat and "atime: 0x00000000:00000000" in stat, stat


def test_erofs_passes_fsck(built: Path) -> None:
    check("fsck.erofs", str(built / "root.erofs"))


def test_squashfs_holds_the_image_tree_with_its_owners(built: Path) -> None:
    superblock = check("unsquashfs", "-s", str(built / "root.squashfs"))
    assert "Creation or last append time Thu Jan  1 00:00:00 1970" in superblock
    listing = check("unsquashfs", "-lln", "-d", "", str(built / "root.squashfs"))
    found = set()
    for line in listing.splitlines():
        words = line.split()
        if len(words) < 6 or "/" not in words[1]:
            continue
        uid, gid = (int(n) for n in words[1].split("/"))
        path = words[5].lstrip("/")
        if path:
            found.add((path, {"d": "d", "l": "l"}.get(words[0][0], "f"), uid, gid))
    assert found == tar_listing(built / "rootfs.tar")


def test_kernel_squashfs_names_its_root(built: Path) -> None:
    cmdline = (built / "kernel+squashfs.cmdline").read_text()
    assert cmdline.endswith(" mk.root=/dev/vda mk.rootfstype=squashfs\n")
    assert (built / "stage1.img").stat().st_size < (built / "initrd.img").stat().st_size / 5
