"""Bootable ISO images, made by xorriso.

xorriso takes the volume's times from SOURCE_DATE_EPOCH, but each file's from its source, unless
`--set_all_file_dates` sets them, and it reads a time of 0 there as "unset": an epoch of 0
becomes 1 for the files.

iso-bios: isolinux (El Torito, no emulation) boots the kernel with the image's own initrd, which
holds the whole root, and its command line. The ISO is also an isohybrid disk: written to a USB
stick, its MBR boots the same isolinux.
"""

from __future__ import annotations

import shlex

from mk.rules.images.bios import write_syslinux_config
from mk.rules.images.format import Built, Format, FormatContext
from mk.rules.providers import Boot

ISOLINUX = "/usr/lib/ISOLINUX"  # from the isolinux package
SYSLINUX_MODULES = "/usr/lib/syslinux/modules/bios"  # from syslinux-common


def iso_bios(fc: FormatContext) -> Built:
    kernel, initrd = fc.parts.kernel, fc.parts.initrd
    iso = fc.out("iso-bios.iso")
    # The volume id: the image's name, as much of it as ISO 9660 allows (32 characters).
    volume_id = shlex.quote(fc.parts.name[:32].upper())
    fc.command("IsoBios", (kernel, initrd), (iso,), f"""
{write_syslinux_config("/tmp/isolinux.cfg", fc.parts.cmdline_text)}
xorriso -as mkisofs -quiet -o {iso.path} -V {volume_id} -r -graft-points \\
    --set_all_file_dates ={max(fc.epoch, 1)} \\
    -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \\
    -isohybrid-mbr {ISOLINUX}/isohdpfx.bin \\
    /isolinux/isolinux.bin={ISOLINUX}/isolinux.bin /isolinux/ldlinux.c32={SYSLINUX_MODULES}/ldlinux.c32 \\
    /isolinux/isolinux.cfg=/tmp/isolinux.cfg /vmlinuz={kernel.path} /initrd.img={initrd.path}
""")
    return Built((iso,), Boot("bios", "cdrom", {"cdrom": iso}))


FORMATS = (
    Format("iso-bios", "A bootable ISO, `iso-bios.iso` (also an isohybrid disk), whose isolinux boots the kernel "
           "and the image's initrd.", iso_bios),
)
