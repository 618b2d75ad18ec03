"""Bootable ISO images, made by xorriso.

xorriso takes the volume's times from SOURCE_DATE_EPOCH, but each file's from its source, unless
`--set_all_file_dates` sets them, and it reads a time of 0 there as "unset": an epoch of 0
becomes 1 for the files.

Both boot the kernel with the image's own initrd, which holds the whole root, and its command line.

iso-bios: isolinux (El Torito, no emulation) boots it. The ISO is also an isohybrid disk: written
to a USB stick, its MBR boots the same isolinux.

iso-efi: the El Torito boot image for UEFI is a FAT image (firmware reads FAT, not ISO 9660)
holding systemd-boot as EFI/BOOT/BOOTX64.EFI (BOOTAA64.EFI on arm64) and a loader entry for the kernel and the initrd,
which are in that image too. Its size does not fit El Torito's 16-bit count of 512-byte sectors
(32 MiB), which xorriso then sets to 0: firmware (OVMF) reads that as "up to the end of the
medium", and the FAT filesystem in it knows its own size. Like the disk and UKI formats, it
takes systemd-boot for the image's machine (see efi_boot.py).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from mk.engine.actions import Artifact
from mk.rules.images.bios import write_syslinux_config
from mk.rules.images.efi_boot import efi_arch, systemd_boot
from mk.rules.images.fat import fat_image
from mk.rules.images.firmware import uefi_built
from mk.rules.images.format import Built, Format, FormatContext
from mk.rules.providers import Boot

ISOLINUX = "/usr/lib/ISOLINUX"  # from the isolinux package
SYSLINUX_MODULES = "/usr/lib/syslinux/modules/bios"  # from syslinux-common


def _xorriso(fc: FormatContext, iso: Artifact, boot: str, files: Mapping[str, str]) -> str:
    """The xorriso command writing `iso` with the El Torito options `boot` and `files` (a path in
    the ISO -> a path in the sandbox). The volume id is the image's name, as much of it as ISO 9660
    allows (32 characters)."""
    grafts = " ".join(shlex.quote(f"/{path}={source}") for path, source in files.items())
    return (f"xorriso -as mkisofs -quiet -o {iso.path} -V {shlex.quote(fc.parts.name[:32].upper())} -r "
            f"--set_all_file_dates ={max(fc.epoch, 1)} {boot} -graft-points {grafts}\n")


def iso_bios(fc: FormatContext) -> Built:
    kernel, initrd = fc.parts.kernel, fc.parts.initrd
    iso = fc.out("iso-bios.iso")
    boot = ("-b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table "
            f"-isohybrid-mbr {ISOLINUX}/isohdpfx.bin")
    files = {"isolinux/isolinux.bin": f"{ISOLINUX}/isolinux.bin",
             "isolinux/ldlinux.c32": f"{SYSLINUX_MODULES}/ldlinux.c32",
             "isolinux/isolinux.cfg": "/tmp/isolinux.cfg", "vmlinuz": kernel.path, "initrd.img": initrd.path}
    fc.command("IsoBios", (kernel, initrd), (iso,),
               write_syslinux_config("/tmp/isolinux.cfg", fc.parts.cmdline_text) + _xorriso(fc, iso, boot, files))
    return Built((iso,), Boot("bios", "cdrom", {"cdrom": iso}))


def iso_efi(fc: FormatContext) -> Built:
    kernel, initrd = fc.parts.kernel, fc.parts.initrd
    fat, iso = fc.out("iso-efi.efi.fat"), fc.out("iso-efi.iso")
    # timeout 0: the default entry at once, without a menu.
    config = (f"cat > /tmp/loader.conf <<'MK_CONFIG_END'\ntimeout 0\ndefault mk.conf\nMK_CONFIG_END\n"
              f"cat > /tmp/mk.conf <<'MK_CONFIG_END'\ntitle {fc.parts.name}\nlinux /vmlinuz\ninitrd /initrd.img\n"
              f"options {fc.parts.cmdline_text}\nMK_CONFIG_END\n")
    boot = fc.once("systemd-boot", systemd_boot)
    fat_image(fc, "IsoEfiBootImage", fat, (kernel, initrd, *boot.inputs),
              {f"EFI/BOOT/{efi_arch(fc).removable}": boot.boot_manager, "loader/loader.conf": "/tmp/loader.conf",
               "loader/entries/mk.conf": "/tmp/mk.conf", "vmlinuz": kernel.path, "initrd.img": initrd.path},
              before=config)
    fc.command("IsoEfi", (fat,), (iso,), _xorriso(fc, iso, "-e efi.img -no-emul-boot", {"efi.img": fat.path}))
    return uefi_built(fc, (iso,), "cdrom", {"cdrom": iso})


FORMATS = (
    Format("iso-bios", "A bootable ISO, `iso-bios.iso` (also an isohybrid disk), whose isolinux boots the kernel "
           "and the image's initrd.", iso_bios),
    Format("iso-efi", "A bootable ISO, `iso-efi.iso`, whose El Torito image for UEFI holds systemd-boot, the kernel "
           "and the image's initrd.", iso_efi),
)
