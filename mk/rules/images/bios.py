"""raw-bios: an MBR disk that a PC BIOS (QEMU's SeaBIOS) boots with syslinux.

Partition 1 (FAT16, active) holds syslinux, the kernel, the stage-1 initrd and syslinux.cfg,
whose kernel command line names partition 2, the squashfs root. Nothing is mounted: the FAT
image is made as `fat.py` says, `syslinux --install` writes its boot sector and ldlinux.sys
through mtools, sfdisk writes the partition table into a sparse file, and dd puts syslinux's
MBR code (the first 440 bytes) and the partitions in place. The MBR's disk id is the first 8
hex digits of a sha256 of the partitions.
"""

from __future__ import annotations

from mk.engine.actions import Artifact
from mk.rules.images.fat import fat_image
from mk.rules.images.format import Built, Format, FormatContext
from mk.rules.images.stage1 import stage1
from mk.rules.providers import Boot

ROOT_DEVICE = "/dev/vda2"  # partition 2 of the first virtio disk, as the guest names it
SYSLINUX_MBR = "/usr/lib/SYSLINUX/mbr.bin"  # boot code that chain-loads the active partition


def write_syslinux_config(path: str, cmdline: str) -> str:
    """A script line that writes the config of syslinux (or isolinux) to `path`: boot /vmlinuz with
    /initrd.img and `cmdline`, at once. SERIAL: syslinux's own messages (a file it cannot find, say)
    reach the serial console too."""
    config = (f"SERIAL 0 115200\nDEFAULT mk\nPROMPT 0\nLABEL mk\n  LINUX /vmlinuz\n  INITRD /initrd.img\n"
              f"  APPEND {cmdline}\n")
    return f"cat > {path} <<'MK_CONFIG_END'\n{config}MK_CONFIG_END\n"


def boot_partition(fc: FormatContext) -> Artifact:
    """The FAT partition: syslinux, the kernel, the stage-1 initrd and syslinux.cfg."""
    kernel, initrd = fc.parts.kernel, fc.once("stage1", stage1)
    out = fc.out("raw-bios.boot.fat")
    config = write_syslinux_config("/tmp/syslinux.cfg",
                                   f"{fc.parts.cmdline_text} mk.root={ROOT_DEVICE} mk.rootfstype=squashfs")
    # syslinux writes its boot sector and ldlinux.sys and ldlinux.c32 (about 180 KiB) through mtools.
    fat_image(fc, "BiosBootPartition", out, (kernel, initrd),
              {"vmlinuz": kernel.path, "initrd.img": initrd.path, "syslinux.cfg": "/tmp/syslinux.cfg"},
              before=config, after='syslinux --install "$out"\n', spare_mib=1)
    return out


def raw_bios(fc: FormatContext) -> Built:
    root = fc.built("squashfs").files[0]
    fat = boot_partition(fc)
    disk = fc.out("raw-bios.img")
    fc.command("BiosDisk", (fat, root), (disk,), f"""
fat={fat.path} root={root.path} out={disk.path}
fat_mib=$(( $(stat -c %s "$fat") / 1048576 ))
root_mib=$(( ($(stat -c %s "$root") + 1048575) / 1048576 ))
truncate -s $(( (1 + fat_mib + root_mib) * 1048576 )) "$out"
sfdisk --quiet --no-reread --no-tell-kernel "$out" <<END
label: dos
label-id: 0x$(cat "$fat" "$root" | sha256sum | cut -c1-8)
unit: sectors
start=2048, size=$((fat_mib * 2048)), type=e, bootable
start=$(( (1 + fat_mib) * 2048 )), size=$((root_mib * 2048)), type=83
END
dd if={SYSLINUX_MBR} of="$out" bs=440 count=1 conv=notrunc status=none
dd if="$fat" of="$out" bs=1M seek=1 conv=notrunc status=none
dd if="$root" of="$out" bs=1M seek=$((1 + fat_mib)) conv=notrunc status=none
""")
    return Built((disk,), Boot("bios", "disk", {"disk": disk}))


FORMATS = (
    Format("raw-bios", "An MBR disk, `raw-bios.img`, that a BIOS boots with syslinux: a FAT partition with the "
           "kernel and the stage-1 initrd, and the squashfs root.", raw_bios),
)
