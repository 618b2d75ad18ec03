"""raw-efi: a GPT disk that UEFI firmware boots by itself.

Partition 1 is the EFI system partition, a FAT image (see `fat`) holding the UKI as
EFI/BOOT/BOOTX64.EFI (BOOTAA64.EFI on arm64), the path firmware tries on a disk it has no boot
entry for. The UKI boots
the stage-1 initrd, which mounts partition 2, the squashfs root; with `verity`, partition 3
holds the root's dm-verity hash tree and the UKI's command line its root hash, so the kernel
refuses any block of the root that differs.

sfdisk writes the GPT from a script. Each partition's GUID derives from what it holds and the
disk's from those; the partition types are those of the Discoverable Partitions Specification
for the image's machine (see efi_boot.py).
Partitions start on MiB boundaries, where dd places them.
"""

from __future__ import annotations

from mk.engine.actions import Action, ActionIO, Artifact
from mk.rules.images.efi_boot import efi_arch
from mk.rules.images.fat import fat_image
from mk.rules.images.firmware import uefi_built
from mk.rules.images.format import UUID_OF, Built, FormatContext
from mk.rules.images.stage1 import stage1, verity_stage1
from mk.rules.images.uki import assemble_uki
from mk.rules.images.verity import verity

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_DEVICE, VERITY_DEVICE = "/dev/vda2", "/dev/vda3"  # as the disk appears to QEMU's virtio

# Reads the arrays files, types, names and $disk; writes $disk.
_PARTITION = r"""
mib() { echo $(( ($(stat -c %s "$1") + 1048575) / 1048576 )); }
start=1  # in MiB: the first MiB holds the protective MBR and the GPT
script=
for i in "${!files[@]}"; do
    size=$(mib "${files[$i]}")
    starts[i]=$start
    uuids[i]=$(uuid_of "${files[$i]}")
    script+="start=$(( start * 2048 )), size=$(( size * 2048 )), type=${types[$i]}, uuid=${uuids[$i]}, "
    script+="name=\"${names[$i]}\""$'\n'
    start=$(( start + size ))
done
printf '%s\n' "${uuids[@]}" > /tmp/uuids
truncate -s $(( (start + 1) * 1048576 )) "$disk"  # and a MiB at the end for the backup GPT
printf 'label: gpt\nlabel-id: %s\nunit: sectors\nfirst-lba: 2048\n%s' "$(uuid_of /tmp/uuids)" "$script" |
    sfdisk --quiet --no-reread --no-tell-kernel "$disk"
for i in "${!files[@]}"; do
    dd if="${files[$i]}" of="$disk" bs=1M seek="${starts[$i]}" conv=notrunc status=none
done
"""


def write_cmdline(io: ActionIO) -> None:
    """The image's command line, the root's words, and those read from the inputs (the verity words)."""
    words = [io.string("text"), *(io.inputs[path].read_text(encoding="utf-8").strip() for path in io.strings("parts"))]
    io.output().write_text(" ".join(words) + "\n", encoding="utf-8")


def esp(fc: FormatContext, uki: Artifact) -> Artifact:
    """A FAT EFI system partition holding `uki` as the machine's EFI/BOOT/BOOT*.EFI."""
    out = fc.out("raw-efi.esp")
    fat_image(fc, "Esp", out, (uki,), {f"EFI/BOOT/{efi_arch(fc).removable}": uki.path})
    return out


def gpt_disk(fc: FormatContext, file: str, partitions: list[tuple[Artifact, str, str]]) -> Artifact:
    """A GPT disk `file` holding each (content, type GUID, name) of `partitions`, in order."""
    disk = fc.out(file)
    fc.command("GptDisk", tuple(p[0] for p in partitions), (disk,), f"""{UUID_OF}
files=({' '.join(p[0].path for p in partitions)})
types=({' '.join(p[1] for p in partitions)})
names=({' '.join(p[2] for p in partitions)})
disk={disk.path}{_PARTITION}""")
    return disk


def raw_efi(fc: FormatContext) -> Built:
    """The disk, its ESP, the UKI on that, the UKI's command line, and with `verity` the hash tree and
    the root hash."""
    root, arch = fc.built("squashfs").files[0], efi_arch(fc)
    text = f"{fc.parts.cmdline_text} mk.root={ROOT_DEVICE} mk.rootfstype=squashfs"
    if fc.parts.verity:
        checked = fc.once("verity", verity)
        text += f" mk.verity={VERITY_DEVICE}"
        initrd, words = fc.once("stage1-verity", verity_stage1), [checked.cmdline]
        hashes, extra = [(checked.tree, arch.verity_type, "root-verity")], [checked.tree, checked.roothash]
    else:
        initrd, words, hashes, extra = fc.once("stage1", stage1), [], [], []
    cmdline = fc.out("raw-efi.cmdline")
    fc.add(Action(owner=fc.ctx.label, mnemonic="Cmdline", inputs=tuple(words), outputs=(cmdline,),
                  params={"text": text, "parts": [w.path for w in words]}, function=write_cmdline))
    uki = assemble_uki(fc, arch.removable, initrd, cmdline)
    partition = esp(fc, uki)
    disk = gpt_disk(fc, "raw-efi.img", [(partition, ESP_TYPE, "esp"), (root, arch.root_type, "root"), *hashes])
    return uefi_built(fc, (disk, partition, uki, cmdline, *extra), "disk", {"disk": disk})
