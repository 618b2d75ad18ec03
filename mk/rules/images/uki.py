"""Unified kernel images: systemd-boot's EFI stub with the kernel, an initrd, the kernel command
line and an os-release as PE sections, one file that UEFI firmware boots by itself (from an ESP
as EFI/BOOT/BOOTX64.EFI or BOOTAA64.EFI, or handed to the firmware as its kernel).

Debian 12 has no ukify: objcopy adds the sections to the stub from systemd-boot-efi (see
efi_boot.py), each at the next 4 KiB boundary after the stub's image and the section before it,
so none overlap. It is the binutils of the image's machine (binutils-aarch64-linux-gnu for an
arm64 image: the host's x86-64 objcopy does not know pei-aarch64-little). The kernel goes into
.linux as it is: Debian's vmlinuz is a PE image on both machines (arm64's an uncompressed Image
with its EFI stub), as systemd 252's stub needs. objcopy stamps the PE header with the time it runs (it
ignores SOURCE_DATE_EPOCH), so the script writes SOURCE_DATE_EPOCH there instead and clears the
header's checksum, which covered the old time (UEFI firmware does not check it).
"""

from __future__ import annotations

from mk.cache.tree import Kind
from mk.engine.actions import Action, ActionIO, Artifact
from mk.rules.images.efi_boot import efi_arch, systemd_boot
from mk.rules.images.firmware import uefi_built
from mk.rules.images.format import Built, FormatContext

# Reads $stub $kernel $initrd $cmdline $osrel $binutils (the tools' prefix), writes $out.
_ASSEMBLE = r"""
end=$("${binutils}objdump" -p "$stub" | sed -n 's/^SizeOfImage[[:space:]]*/0x/p')
args=()
add() {
    end=$(( (end + 4095) / 4096 * 4096 ))
    args+=(--add-section "$1=$2" --change-section-vma "$1=$(printf 0x%x "$end")")
    end=$(( end + $(stat -c %s "$2") ))
}
# systemd-stub hands the section's bytes to the kernel as they are: no newline.
tr -d '\n' < "$cmdline" > /tmp/cmdline
add .osrel "$osrel"
add .cmdline /tmp/cmdline
add .linux "$kernel"
add .initrd "$initrd"
"${binutils}objcopy" "${args[@]}" "$stub" "$out"
le32() {
    printf "$(printf '\\%03o' $(( $1 & 255 )) $(( $1 >> 8 & 255 )) $(( $1 >> 16 & 255 )) $(( $1 >> 24 & 255 )))"
}
pe=$(od -An -tu4 -j 60 -N 4 "$out" | tr -d ' ')  # where the PE header starts
le32 "$SOURCE_DATE_EPOCH" | dd of="$out" bs=1 seek=$(( pe + 8 )) conv=notrunc status=none  # TimeDateStamp
le32 0 | dd of="$out" bs=1 seek=$(( pe + 88 )) conv=notrunc status=none  # CheckSum
"""


def write_os_release(io: ActionIO) -> None:
    """The image's own os-release, or a short one naming the image when it has none."""
    tree = io.read_tree(io.string("root"))
    found = (tree.lookup(path) for path in ("etc/os-release", "usr/lib/os-release"))
    entry = next((e for e in found if e is not None and e.kind is Kind.FILE), None)
    with open(io.output(), "wb") as out:
        if entry is None:
            out.write(io.string("fallback").encode())
        else:
            io.cas.copy_to(entry.digest, out, entry.size)


def _os_release(fc: FormatContext) -> Artifact:
    out = fc.out("os-release")
    fallback = f'NAME="mk image"\nID=mk\nPRETTY_NAME="{fc.ctx.label}"\n'
    fc.add(Action(owner=fc.ctx.label, mnemonic="OsRelease", inputs=(fc.parts.tree,), outputs=(out,),
                  params={"root": fc.parts.tree.path, "fallback": fallback}, function=write_os_release))
    return out


def assemble_uki(fc: FormatContext, file: str, initrd: Artifact, cmdline: Artifact) -> Artifact:
    """The image's kernel with `initrd` and the command line in the file `cmdline`, as `file`."""
    out = fc.out(file)
    osrel = fc.once("os-release", _os_release)
    boot = fc.once("systemd-boot", systemd_boot)
    fc.command("Uki", (fc.parts.kernel, initrd, cmdline, osrel, *boot.inputs), (out,),
               f"stub={boot.stub} kernel={fc.parts.kernel.path} initrd={initrd.path} cmdline={cmdline.path} "
               f"osrel={osrel.path} out={out.path} binutils={efi_arch(fc).triplet}-{_ASSEMBLE}")
    return out


def uki(fc: FormatContext) -> Built:
    """The image's kernel, its whole initrd and its command line."""
    out = assemble_uki(fc, "uki.efi", fc.parts.initrd, fc.parts.cmdline)
    return uefi_built(fc, (out,), "kernel", {"kernel": out})
