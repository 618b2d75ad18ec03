"""Image formats of //examples:sshd, checked by each filesystem's own tools (from the host, so
that mk's sandboxed toolchain is not judging its own work). Needs the Debian mirror."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from conftest import MIRROR_SECONDS, MK, mk_env, require, run_within

from mk.rules.images.stage1 import VERITY_STATUS

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.mirror
ROOT_FILESYSTEMS = ("squashfs", "erofs", "ext4")
DISKS = ("raw-bios", "iso-bios", "iso-efi", "qcow2", "vhd")


def build_examples(root: Path, formats: tuple[str, ...], verity: bool = True, platform: str = "") -> Path:
    """mk-out/examples/sshd/ of a copy of the examples in `root`, made in `formats`; `verity` as in
    examples/BUILD, or turned off; for `platform` (`linux/arm64`), or the host's."""
    (root / "mk.toml").write_text((REPO / "mk.toml").read_text())
    subprocess.run(["cp", "-r", str(REPO / "examples"), str(root / "examples")], check=True)
    if not verity:
        build = root / "examples/BUILD"
        assert "    verity = True,\n" in build.read_text()
        build.write_text(build.read_text().replace("    verity = True,\n", ""))
    arguments = [arg for name in formats for arg in ("--format", name)]
    platforms = ["--platform", platform] if platform else []
    result = run_within([MK, "image", "//examples:sshd", *platforms, *arguments], MIRROR_SECONDS,
                        "`mk image` of every format", cwd=root, env=mk_env(root / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "mk-out" / (f"{platform.replace('/', '-')}/" if platform else "") / "examples/sshd"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every format of the sshd example (whose disk formats have a verity-protected root)."""
    return build_examples(tmp_path_factory.mktemp("formats"),
                          (*ROOT_FILESYSTEMS, "kernel+squashfs", "tar", "uki", "raw-efi", *DISKS))


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


def uuid_of(data: bytes) -> str:
    """A UUID from content, as mk's format scripts make them: sha256, marked as version 4."""
    h = hashlib.sha256(data).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"


def pe_sections(efi: Path, into: Path) -> dict[str, bytes]:
    """A UKI's sections, dumped by the host's objcopy."""
    names = (".osrel", ".cmdline", ".linux", ".initrd")
    into.mkdir()
    check("objcopy", *(arg for n in names for arg in ("--dump-section", f"{n}={into / n}")), str(efi), str(into / "x"))
    return {n: (into / n).read_bytes() for n in names}


def initrd_files(efi: Path, into: Path) -> set[str]:
    """The paths in a UKI's initrd (a zstd cpio)."""
    initrd = pe_sections(efi, into)[".initrd"]
    data = subprocess.run(["zstd", "-dc"], input=initrd, capture_output=True, check=True).stdout
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True).stdout
    return set(listing.decode().split())


def os_release(built: Path) -> bytes:
    with tarfile.open(built / "rootfs.tar") as archive:
        member = archive.extractfile("usr/lib/os-release")
        assert member is not None
        return member.read()


def test_ukis_hold_the_kernel_their_initrd_cmdline_and_os_release(built: Path, tmp_path: Path) -> None:
    for efi, initrd, cmdline in (("uki.efi", (built / "initrd.img").read_bytes(), "cmdline"),
                                 ("BOOTX64.EFI", None, "raw-efi.cmdline")):
        sections = pe_sections(built / efi, tmp_path / efi)
        assert sections[".linux"] == (built / "kernel").read_bytes()
        assert sections[".cmdline"] == (built / cmdline).read_bytes().rstrip(b"\n")
        assert sections[".osrel"] == os_release(built)
        if initrd is not None:
            assert sections[".initrd"] == initrd
        headers = check("objdump", "-p", "-h", str(built / efi))
        # The time is SOURCE_DATE_EPOCH (0), not when objcopy ran; the checksum that covered it is cleared.
        assert re.search(r"^Time/Date\s+Thu Jan  1 00:00:00 1970$", headers, re.M), headers
        assert re.search(r"^CheckSum\s+00000000$", headers, re.M), headers
        layout = sorted((int(vma, 16), int(size, 16)) for size, vma in
                        re.findall(r"^ +\d+ \S+ +([0-9a-f]{8}) +([0-9a-f]{16}) ", headers, re.M))
        assert len(layout) == 12, headers  # the stub's 8 sections and the 4 added
        assert all(vma + size <= after for (vma, size), (after, _) in itertools.pairwise(layout)), layout


def test_raw_efi_stage1_opens_the_verity_root_with_dmsetup(built: Path, tmp_path: Path) -> None:
    files = initrd_files(built / "BOOTX64.EFI", tmp_path / "sections")
    assert {"init", "usr/bin/busybox", "usr/sbin/dmsetup", "lib64/ld-linux-x86-64.so.2",
            "lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libdevmapper.so.1.02.1"} <= files
    assert any(f.endswith("/dm-verity.ko") for f in files)
    assert "usr/sbin/sshd" not in files
    # The root's last boot step says the device's status on the console, where a boot test reads it.
    onboot = check("unsquashfs", "-cat", str(built / "root.squashfs"), "etc/mk/onboot")
    assert onboot.endswith(f"{VERITY_STATUS}\n") and "dmsetup status mk-root" in VERITY_STATUS


def test_raw_efi_partitions_and_guids_derive_from_their_content(built: Path, tmp_path: Path) -> None:
    disk = (built / "raw-efi.img").read_bytes()
    dump = check("sfdisk", "--dump", str(built / "raw-efi.img"))
    rows = re.findall(r"^\S+ : start= *(\d+), size= *(\d+), type=(\S+), uuid=(\S+), name=\"([^\"]*)\"$", dump, re.M)
    expected = [("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "raw-efi.esp"),
                ("root", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "root.squashfs"),
                ("root-verity", "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5", "root.verity")]
    assert [(name, kind) for _, _, kind, _, name in rows] == [(name, kind) for name, kind, _ in expected], dump
    uuids = []
    for (start, size, _, uuid, _), (_, _, file) in zip(rows, expected, strict=True):
        content = (built / file).read_bytes()
        assert uuid == uuid_of(content).upper()
        uuids.append(uuid_of(content))
        assert int(start) % 2048 == 0 and int(size) * 512 >= len(content)  # on MiB boundaries, and it fits
        assert disk[int(start) * 512:int(start) * 512 + len(content)] == content, file
    label = re.search(r"^label-id: (\S+)$", dump, re.M)
    assert label is not None and label.group(1) == uuid_of("".join(u + "\n" for u in uuids).encode()).upper()


def test_raw_efi_esp_passes_fsck_and_holds_the_uki(built: Path, tmp_path: Path) -> None:
    check("fsck.fat", "-n", str(built / "raw-efi.esp"))
    uki = (built / "BOOTX64.EFI").read_bytes()
    env = {"MTOOLS_SKIP_CHECK": "1", "TZ": "UTC", "PATH": "/usr/bin:/bin"}
    subprocess.run(["mcopy", "-i", str(built / "raw-efi.esp"), "::/EFI/BOOT/BOOTX64.EFI", str(tmp_path / "copy")],
                   env=env, check=True)
    assert (tmp_path / "copy").read_bytes() == uki
    listing = subprocess.run(["mdir", "-i", str(built / "raw-efi.esp"), "::/EFI/BOOT"], env=env, capture_output=True,
                             text=True, check=True).stdout
    # The volume id from the UKI's content; the files dated SOURCE_DATE_EPOCH (0), as FAT can: 1980.
    serial = hashlib.sha256(uki).hexdigest()[:8].upper()
    assert f"Volume Serial Number is {serial[:4]}-{serial[4:]}" in listing
    assert re.search(r"^BOOTX64  EFI +[\d ]+ 1980-01-01 +0:00 $", listing, re.M), listing


def test_verity_tree_checks_the_root_against_the_hash_on_the_cmdline(built: Path, tmp_path: Path) -> None:
    root = (built / "root.squashfs").read_bytes()
    roothash = (built / "root.roothash").read_text().strip()
    assert (built / "raw-efi.cmdline").read_text() == (
        f"console=ttyS0 panic=-1 mk.root=/dev/vda2 mk.rootfstype=squashfs mk.verity=/dev/vda3 "
        f"mk.verity.blocks={len(root) // 4096} mk.verity.salt={hashlib.sha256(root).hexdigest()} "
        f"mk.roothash={roothash}\n")
    check("veritysetup", "verify", str(built / "root.squashfs"), str(built / "root.verity"), roothash)
    tampered = bytearray(root)
    tampered[len(root) // 2] ^= 1
    (tmp_path / "tampered").write_bytes(tampered)
    result = subprocess.run(["veritysetup", "verify", str(tmp_path / "tampered"), str(built / "root.verity"),
                             roothash], capture_output=True, text=True)
    assert result.returncode != 0 and "Verification failed" in result.stderr + result.stdout


def test_uefi_firmware_is_beside_the_uefi_formats(built: Path) -> None:
    for name in ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"):
        firmware = (built / name).read_bytes()
        assert firmware[40:44] == b"_FVH", name  # a UEFI firmware volume
    assert (built / "OVMF_CODE_4M.fd").stat().st_size + (built / "OVMF_VARS_4M.fd").stat().st_size == 4 << 20


def test_raw_efi_without_verity_has_no_hash_tree_and_no_dmsetup(tmp_path: Path) -> None:
    built = build_examples(tmp_path, ("raw-efi", "squashfs"), verity=False)
    assert (built / "raw-efi.cmdline").read_text() == \
        "console=ttyS0 panic=-1 mk.root=/dev/vda2 mk.rootfstype=squashfs\n"
    dump = check("sfdisk", "--dump", str(built / "raw-efi.img"))
    assert [name for name in re.findall(r'name="([^"]*)"$', dump, re.M)] == ["esp", "root"]
    assert f"uuid={uuid_of((built / 'root.squashfs').read_bytes()).upper()}, name=\"root\"" in dump
    assert not (built / "root.verity").exists() and not (built / "root.roothash").exists()
    files = initrd_files(built / "BOOTX64.EFI", tmp_path / "sections")
    assert "init" in files and "usr/sbin/dmsetup" not in files
    assert "dmsetup" not in check("unsquashfs", "-cat", str(built / "root.squashfs"), "etc/mk/onboot")


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


def pe_file(efi: Path) -> tuple[int, int, dict[str, bytes]]:
    """A PE file's machine, time stamp and sections, read by hand: the host's objcopy knows only
    x86's PE formats."""
    data = efi.read_bytes()
    pe = int.from_bytes(data[60:64], "little")
    assert data[pe:pe + 4] == b"PE\0\0", efi
    machine, count, time = struct.unpack_from("<HHI", data, pe + 4)
    (optional,) = struct.unpack_from("<H", data, pe + 20)
    sections = {}
    for i in range(count):
        name, size, _, raw_size, start = struct.unpack_from("<8sIIII", data, pe + 24 + optional + 40 * i)
        sections[name.rstrip(b"\0").decode()] = data[start:start + min(size, raw_size)]
    return machine, time, sections


def test_the_arm64_uefi_formats_hold_aarch64_pe_files_and_arm64_partition_types(tmp_path: Path) -> None:
    """//examples:sshd for linux/arm64: its UKIs are systemd-boot's aarch64 stub with the arm64 kernel,
    the ESP boots BOOTAA64.EFI, the GPT has the arm64 root and verity types, the ISO's El Torito
    image boots systemd-bootaa64.efi, and AAVMF goes beside them."""
    built = build_examples(tmp_path, ("tar", "uki", "raw-efi", "iso-efi"), platform="linux/arm64")
    kernel = (built / "kernel").read_bytes()
    assert kernel[56:60] == b"ARMd"  # an arm64 Image (uncompressed, with its own PE header): what the stub starts
    for efi, cmdline in (("uki.efi", "cmdline"), ("BOOTAA64.EFI", "raw-efi.cmdline")):
        machine, time, sections = pe_file(built / efi)
        assert (machine, time) == (0xAA64, 0), efi  # IMAGE_FILE_MACHINE_ARM64, SOURCE_DATE_EPOCH
        assert sections[".linux"] == kernel
        assert sections[".cmdline"] == (built / cmdline).read_bytes().rstrip(b"\n")
        assert sections[".osrel"] == os_release(built)
    assert pe_file(built / "uki.efi")[2][".initrd"] == (built / "initrd.img").read_bytes()
    stage1 = subprocess.run(["zstd", "-dc"], input=pe_file(built / "BOOTAA64.EFI")[2][".initrd"], capture_output=True,
                            check=True).stdout
    files = set(subprocess.run(["cpio", "-it", "--quiet"], input=stage1, capture_output=True,
                               check=True).stdout.decode().split())
    assert {"usr/sbin/dmsetup", "lib/ld-linux-aarch64.so.1", "lib/aarch64-linux-gnu/libdevmapper.so.1.02.1"} <= files
    dump = check("sfdisk", "--dump", str(built / "raw-efi.img"))
    assert re.findall(r"type=(\S+),", dump) == ["C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                                                "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
                                                "DF3300CE-D69F-4C92-978C-9BFB0F38D820"], dump
    assert fat_file(built / "raw-efi.esp", "EFI/BOOT/BOOTAA64.EFI") == (built / "BOOTAA64.EFI").read_bytes()
    check("xorriso", "-osirrox", "on", "-indev", str(built / "iso-efi.iso"), "-extract", "/efi.img",
          str(tmp_path / "efi.img"))
    check_fat(tmp_path / "efi.img", ["EFI/BOOT/BOOTAA64.EFI", "loader/loader.conf", "loader/entries/mk.conf",
                                     "vmlinuz", "initrd.img"])
    boot_manager = tmp_path / "systemd-boot.efi"
    boot_manager.write_bytes(fat_file(tmp_path / "efi.img", "EFI/BOOT/BOOTAA64.EFI"))
    assert pe_file(boot_manager)[0] == 0xAA64
    assert fat_file(tmp_path / "efi.img", "vmlinuz") == kernel
    code = (built / "AAVMF_CODE.fd").read_bytes()
    assert code[4096 + 40:4096 + 44] == b"_FVH"  # a UEFI firmware volume, after the first block's branch
    # Each the size of a virt board's flash device (the store is blank: the firmware formats it).
    assert len(code) == (built / "AAVMF_VARS.fd").stat().st_size == 64 << 20


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
