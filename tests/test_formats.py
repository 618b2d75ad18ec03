"""Image formats of //examples:sshd, checked by each filesystem's own tools (from the host, so
that mk's sandboxed toolchain is not judging its own work). Needs the Debian mirror."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from conftest import MIRROR_SECONDS, MK, mk_env, require, run_within

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.mirror
ROOT_FILESYSTEMS = ("squashfs", "erofs", "ext4")
DISKS = ("raw-bios", "iso-bios", "iso-efi", "qcow2", "vhd")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mk-out/examples/sshd/ of a copy of the examples, with every root filesystem format."""
    root = tmp_path_factory.mktemp("formats")
    (root / "mk.toml").write_text((REPO / "mk.toml").read_text())
    subprocess.run(["cp", "-r", str(REPO / "examples"), str(root / "examples")], check=True)
    formats = [arg for name in (*ROOT_FILESYSTEMS, "kernel+squashfs", "tar", *DISKS) for arg in ("--format", name)]
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


def partitions(disk: Path) -> list[dict[str, Any]]:
    table = json.loads(check("sfdisk", "--json", str(disk)))["partitiontable"]
    assert isinstance(table["partitions"], list)
    return table["partitions"]


def partition(disk: Path, number: int, into: Path) -> Path:
    """Partition `number` of `disk`, copied out with dd."""
    found = partitions(disk)[number - 1]
    check("dd", f"if={disk}", f"of={into}", "bs=512", f"skip={found['start']}", f"count={found['size']}",
          "status=none")
    return into


def test_raw_bios_is_an_mbr_disk_whose_id_derives_from_its_content(built: Path, tmp_path: Path) -> None:
    disk = built / "raw-bios.img"
    dump = check("sfdisk", "--dump", str(disk)).replace(str(disk), "disk")
    boot, root = partitions(disk)
    content = partition(disk, 1, tmp_path / "boot").read_bytes() + (built / "root.squashfs").read_bytes()
    assert dump.splitlines()[:2] == ["label: dos", f"label-id: 0x{hashlib.sha256(content).hexdigest()[:8]}"]
    assert f"disk1 : start=        2048, size={boot['size']:>12}, type=e, bootable\n" in dump
    assert f"disk2 : start={2048 + boot['size']:>12}, size={root['size']:>12}, type=83\n" in dump
    mbr = disk.read_bytes()[:440]  # syslinux's boot code, which starts the active partition
    assert b"Missing operating system." in mbr and b"Multiple active partitions." in mbr


def test_raw_bios_root_partition_is_the_squashfs(built: Path, tmp_path: Path) -> None:
    disk = built / "raw-bios.img"
    assert [p["type"] for p in partitions(disk)] == ["e", "83"]
    root = partition(disk, 2, tmp_path / "root").read_bytes()
    squashfs = (built / "root.squashfs").read_bytes()
    assert root[:len(squashfs)] == squashfs and root[len(squashfs):] == bytes(len(root) - len(squashfs))


def test_raw_bios_boot_partition_passes_fsck_and_boots_the_root(built: Path, tmp_path: Path) -> None:
    fat = partition(built / "raw-bios.img", 1, tmp_path / "boot.fat")
    listing = check_fat(fat, ["vmlinuz", "initrd.img", "syslinux.cfg"])
    for name in ("vmlinuz", "initrd   img", "syslinux cfg", "ldlinux  sys", "ldlinux  c32"):
        assert f"\n{name} " in listing, listing
    assert fat_file(fat, "vmlinuz") == (built / "kernel").read_bytes()
    assert fat_file(fat, "initrd.img") == (built / "stage1.img").read_bytes()
    config = fat_file(fat, "syslinux.cfg").decode()
    cmdline = (built / "cmdline").read_text().strip()
    assert f"  APPEND {cmdline} mk.root=/dev/vda2 mk.rootfstype=squashfs\n" in config
    assert "  INITRD /initrd.img\n" in config and "  LINUX /vmlinuz\n" in config


def check_fat(fat: Path, sources: list[str]) -> str:
    """`fat`'s listing (mdir, every folder), once fsck.fat finds it sound and its volume id is that
    of the files `sources`; every file and folder is dated SOURCE_DATE_EPOCH (0, which FAT cannot
    hold: 1980-01-01), and there is no volume label, whose entry mkfs.fat would date."""
    check("fsck.fat", "-n", str(fat))
    listing = check("mdir", "-/", "-a", "-i", str(fat), "::")
    volume = hashlib.sha256(b"".join(fat_file(fat, name) for name in sources)).hexdigest()[:8]
    assert f" Volume in drive : has no label\n Volume Serial Number is {volume[:4]}-{volume[4:]}\n".upper() in \
        listing.upper()
    dates = re.findall(r" (\d{4}-\d\d-\d\d +\d+:\d\d) ", listing)
    assert len(dates) >= len(sources) and set(dates) == {"1980-01-01   0:00"}, listing
    return listing


def fat_file(fat: Path, name: str) -> bytes:
    return check_bytes("mcopy", "-i", str(fat), f"::/{name}", "-")


def check_bytes(*command: str) -> bytes:
    require(command[0])
    result = subprocess.run(command, capture_output=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}: {result.returncode}\n{result.stderr!r}"
    return result.stdout


def test_iso_bios_boots_isolinux_from_el_torito(built: Path) -> None:
    report = check("xorriso", "-indev", str(built / "iso-bios.iso"), "-report_el_torito", "plain")
    assert "El Torito boot img :   1  BIOS  y   none  0x0000  0x00      4" in report
    assert "El Torito img path :   1  /isolinux/isolinux.bin\n" in report
    assert "El Torito img opts :   1  boot-info-table isohybrid-suitable\n" in report
    # isohybrid: its MBR boots the same isolinux from a USB stick
    (whole,) = partitions(built / "iso-bios.iso")
    assert (whole["start"], whole["type"], whole.get("bootable")) == (0, "17", True)


def test_iso_bios_holds_the_kernel_and_the_whole_initrd(built: Path, tmp_path: Path) -> None:
    iso = str(built / "iso-bios.iso")
    listing = check("xorriso", "-indev", iso, "-find", "/", "-exec", "lsdl")
    names = [line.split("'")[1] for line in listing.splitlines()]
    assert names == ["/", "/initrd.img", "/isolinux", "/isolinux/boot.cat", "/isolinux/isolinux.bin",
                     "/isolinux/isolinux.cfg", "/isolinux/ldlinux.c32", "/vmlinuz"]
    # Owned by root, and dated SOURCE_DATE_EPOCH (0; 1 s for the files, as xorriso reads 0 as unset)
    assert all(" 0        0  " in line and " Jan  1  1970 " in line for line in listing.splitlines()), listing
    check("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/", str(tmp_path / "iso"))
    assert (tmp_path / "iso/vmlinuz").read_bytes() == (built / "kernel").read_bytes()
    assert (tmp_path / "iso/initrd.img").read_bytes() == (built / "initrd.img").read_bytes()
    cmdline = (built / "cmdline").read_text().strip()
    assert f"  APPEND {cmdline}\n" in (tmp_path / "iso/isolinux/isolinux.cfg").read_text()


def test_iso_efi_boots_systemd_boot_from_el_torito(built: Path, tmp_path: Path) -> None:
    iso = str(built / "iso-efi.iso")
    report = check("xorriso", "-indev", iso, "-report_el_torito", "plain")
    # A load size of 0: the FAT image is over El Torito's 32 MiB, and firmware reads to the medium's end
    assert "El Torito boot img :   1  UEFI  y   none  0x0000  0x00      0" in report
    assert "El Torito img path :   1  /efi.img\n" in report
    check("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/efi.img", str(tmp_path / "efi.img"))
    fat = tmp_path / "efi.img"
    listing = check_fat(fat, ["EFI/BOOT/BOOTX64.EFI", "loader/loader.conf", "loader/entries/mk.conf", "vmlinuz",
                              "initrd.img"])
    assert "\nBOOTX64  EFI " in listing
    assert fat_file(fat, "EFI/BOOT/BOOTX64.EFI")[:2] == b"MZ"  # systemd-boot, a PE program
    assert fat_file(fat, "loader/loader.conf") == b"timeout 0\ndefault mk.conf\n"
    cmdline = (built / "cmdline").read_text().strip()
    assert fat_file(fat, "loader/entries/mk.conf").decode() == \
        f"title sshd\nlinux /vmlinuz\ninitrd /initrd.img\noptions {cmdline}\n"
    assert fat_file(fat, "vmlinuz") == (built / "kernel").read_bytes()
    assert fat_file(fat, "initrd.img") == (built / "initrd.img").read_bytes()


def test_qcow2_passes_qemu_img_check_and_holds_the_raw_disk(built: Path) -> None:
    check("qemu-img", "check", "-f", "qcow2", str(built / "disk.qcow2"))
    check("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(built / "disk.qcow2"), str(built / "raw-bios.img"))


def test_vhd_is_a_fixed_vhd_of_the_raw_disk_without_a_clock_or_random_id(built: Path) -> None:
    disk, raw = built / "disk.vhd", (built / "raw-bios.img").read_bytes()
    # qemu-img checks the footer's checksum as it opens it
    info = json.loads(check("qemu-img", "info", "-f", "vpc", "--output=json", str(disk)))
    assert (info["format"], info["virtual-size"]) == ("vpc", len(raw))
    check("qemu-img", "compare", "-f", "vpc", "-F", "raw", str(disk), str(built / "raw-bios.img"))
    data = disk.read_bytes()
    assert data[:-512] == raw
    footer = data[-512:]
    assert footer[:8] == b"conectix" and footer[60:64] == (2).to_bytes(4, "big")  # fixed
    assert footer[24:28] == bytes(4)  # SOURCE_DATE_EPOCH is 0, before a VHD's 2000
    uuid = bytearray.fromhex(hashlib.sha256(raw).hexdigest()[:32])
    uuid[6], uuid[8] = 0x40 | uuid[6] & 0x0F, 0x80 | uuid[8] & 0x0F  # marked as version 4, RFC 4122
    assert footer[68:84] == uuid
