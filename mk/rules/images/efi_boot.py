"""systemd-boot for the UEFI formats, and what they name after the machine they boot: the path
firmware boots a removable medium from, the binutils that know its PE format, and the
Discoverable Partitions Specification's root types.

systemd-boot's EFI stub and boot manager come from the image's `efi_boot` tree, Debian's
systemd-boot-efi for the image's platform (only unpacked, never run, so an arm64 package serves
on an amd64 host); without one, from the toolchain, whose systemd-boot-efi is the exec
platform's and so boots only an image for this host's machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from mk.engine.actions import Action, Artifact
from mk.rules.images.firmware import copy_from_tree
from mk.rules.images.format import FormatContext

EFI_FOLDER = "usr/lib/systemd/boot/efi"


@dataclass(frozen=True)
class EfiArch:
    suffix: str  # UEFI's name for the machine in file names: x64, aa64
    triplet: str  # the GNU triplet whose binutils (binutils-TRIPLET, in the toolchain) read its PE files
    root_type: str  # the GPT partition type of its root
    verity_type: str  # ... and of that root's dm-verity hash tree

    @property
    def stub(self) -> str:
        """systemd-boot's EFI stub, in systemd-boot-efi's tree."""
        return f"{EFI_FOLDER}/linux{self.suffix}.efi.stub"

    @property
    def boot_manager(self) -> str:
        return f"{EFI_FOLDER}/systemd-boot{self.suffix}.efi"

    @property
    def removable(self) -> str:
        """The file firmware boots from a medium it has no boot entry for."""
        return f"BOOT{self.suffix.upper()}.EFI"


EFI_ARCHES = {
    "x86_64": EfiArch("x64", "x86_64-linux-gnu", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
                      "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5"),
    "aarch64": EfiArch("aa64", "aarch64-linux-gnu", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
                       "DF3300CE-D69F-4C92-978C-9BFB0F38D820"),
}


@dataclass(frozen=True)
class SystemdBoot:
    """Where a format command finds systemd-boot's files, and the inputs that bring them."""

    stub: str
    boot_manager: str
    inputs: tuple[Artifact, ...]


def efi_arch(fc: FormatContext) -> EfiArch:
    return EFI_ARCHES[fc.ctx.platform.machine]


def systemd_boot(fc: FormatContext) -> SystemdBoot:
    """Call it through `fc.once("systemd-boot", systemd_boot)`."""
    arch = efi_arch(fc)
    files = {"stub": arch.stub, "boot_manager": arch.boot_manager}
    tree = fc.parts.efi_boot
    if tree is None:
        return SystemdBoot(f"/{files['stub']}", f"/{files['boot_manager']}", ())
    copies = {role: fc.out(path.rsplit("/", 1)[1]) for role, path in files.items()}
    fc.add(Action(owner=fc.ctx.label, mnemonic="SystemdBoot", inputs=(tree,), outputs=tuple(copies.values()),
                  params={"tree": tree.path, "files": list(files.values()), "package": "systemd-boot-efi",
                          "attribute": "efi_boot"},
                  function=copy_from_tree))
    return SystemdBoot(copies["stub"].path, copies["boot_manager"].path, tuple(copies.values()))

