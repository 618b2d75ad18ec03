"""qcow2 and vhd: the raw-bios disk converted by `qemu-img convert`, for QEMU/KVM and clouds.

qemu-img writes in order (never `-W`, whose out-of-order writes change the layout). A qcow2 holds
no time or id. A VHD's footer does: the creation time and a random UUID, which no option sets,
so mk rewrites them: the time is SOURCE_DATE_EPOCH (a VHD counts from 2000, so earlier epochs
become 0), the UUID derives from the raw disk's sha256, and the footer's checksum is made again.
"""

from __future__ import annotations

from mk.rules.images.format import UUID_OF, Built, Format, FormatContext
from mk.rules.providers import Boot

VHD_EPOCH = 946684800  # 2000-01-01 00:00:00 UTC, when a VHD's clock starts

# Sets the footer (the last 512 bytes) of the fixed VHD at $out: the time at byte 24 (4 bytes, big
# endian), the UUID at 68 (16 bytes); then the checksum at 64, the one's complement of the sum of
# the footer's bytes, counted with the checksum's own bytes as zeros.
_SET_VHD_FOOTER = r"""footer=$(( $(stat -c %s "$out") - 512 ))
put() {  # put OFFSET HEX: the bytes HEX at OFFSET of the footer
    printf "$(sed 's/../\\x&/g' <<< "$2")" | dd of="$out" bs=1 seek=$((footer + $1)) conv=notrunc status=none
}
put 24 "$(printf %08x "$time")"
put 68 "$(uuid_of "$raw" | tr -d -)"
put 64 00000000
sum=0
for byte in $(od -An -v -tu1 -j "$footer" -N 512 "$out"); do sum=$((sum + byte)); done
put 64 "$(printf %08x $(( ~sum & 0xffffffff )))"
"""


def qcow2(fc: FormatContext) -> Built:
    raw = fc.built("raw-bios").files[0]
    out = fc.out("disk.qcow2")
    fc.command("Qcow2", (raw,), (out,), f"qemu-img convert -q -f raw -O qcow2 {raw.path} {out.path}\n")
    return Built((out,), Boot("bios", "disk", {"disk": out}, "qcow2"))


def vhd(fc: FormatContext) -> Built:
    raw = fc.built("raw-bios").files[0]
    out = fc.out("disk.vhd")
    # fixed: the raw disk followed by the footer, the kind every hypervisor and cloud (Azure) takes;
    # force_size: the disk's own size, not one rounded to a cylinder count.
    fc.command("Vhd", (raw,), (out,), f"""{UUID_OF}
raw={raw.path} out={out.path} time={max(fc.epoch - VHD_EPOCH, 0)}
qemu-img convert -q -f raw -O vpc -o subformat=fixed,force_size=on "$raw" "$out"
{_SET_VHD_FOOTER}""")
    return Built((out,), Boot("bios", "disk", {"disk": out}, "vpc"))


FORMATS = (
    Format("qcow2", "The raw-bios disk as `disk.qcow2`.", qcow2),
    Format("vhd", "The raw-bios disk as a fixed VHD, `disk.vhd` (Hyper-V, Azure).", vhd),
)
