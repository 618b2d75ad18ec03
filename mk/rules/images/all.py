"""Every image format mk offers, by name, in the order BUILD.md lists them."""

from __future__ import annotations

from mk.rules.images import bios, convert, efi_disk, filesystems, iso, uki
from mk.rules.images.format import Format

FORMATS: dict[str, Format] = {f.name: f for f in (
    *filesystems.FORMATS,
    Format("uki", "A unified kernel image `uki.efi`: systemd-boot's EFI stub with the kernel, the image's "
           "initrd, its cmdline and os-release, which UEFI firmware boots by itself.", uki.uki),
    Format("raw-efi", "A GPT disk `raw-efi.img` that UEFI firmware boots: an EFI system partition "
           "(`raw-efi.esp`) holding a UKI with the stage-1 initrd as `EFI/BOOT/BOOTX64.EFI` (`BOOTAA64.EFI` on "
           "arm64), then the squashfs root, and with `verity` its hash tree (`root.verity`, root hash in "
           "`root.roothash`).", efi_disk.raw_efi),
    *bios.FORMATS,
    *iso.FORMATS,
    *convert.FORMATS,
)}

# Formats whose boot chain is made for x86-64 PCs (syslinux and isolinux, and the disks converted
# from those): an image for another platform does not offer them, rather than writing a disk its
# machine cannot boot.
X86_64_ONLY = frozenset({"raw-bios", "iso-bios", *(f.name for f in convert.FORMATS)})

# Formats that boot through systemd-boot (see efi_boot.py): an image for a platform other than
# this host's offers them only with an `efi_boot` tree of that platform's systemd-boot-efi.
UEFI = frozenset({"uki", "raw-efi", "iso-efi"})
