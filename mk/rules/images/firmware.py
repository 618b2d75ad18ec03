"""UEFI firmware for `mk run`: the firmware's code and its variable store, copied out of a locked
package's tree (the image's `firmware` attribute: Debian's ovmf for an x86-64 image, its
qemu-efi-aarch64, AAVMF, for an arm64 one) beside the UEFI formats, so that QEMU never boots them
with whatever firmware the host has."""

from __future__ import annotations

from collections.abc import Mapping

from mk.cache.tree import Kind
from mk.engine.actions import Action, ActionIO, Artifact
from mk.rules.images.format import Built, FormatContext
from mk.rules.providers import Boot

# By machine, the package and its files. OVMF's 4 MiB builds without Secure Boot, which run on
# QEMU's default machine, with no SMM. AAVMF's, each already the 64 MiB of a virt board's flash:
# its code can do Secure Boot, but the variable store enrolls no keys, so it boots what it is given.
FIRMWARE = {
    "x86_64": ("ovmf", {"firmware_code": "usr/share/OVMF/OVMF_CODE_4M.fd",
                        "firmware_vars": "usr/share/OVMF/OVMF_VARS_4M.fd"}),
    "aarch64": ("qemu-efi-aarch64", {"firmware_code": "usr/share/AAVMF/AAVMF_CODE.fd",
                                     "firmware_vars": "usr/share/AAVMF/AAVMF_VARS.fd"}),
}


def copy_from_tree(io: ActionIO) -> None:
    """Copies the `files` of a package's tree to the outputs, in order."""
    tree = io.read_tree(io.string("tree"))
    for index, path in enumerate(io.strings("files")):
        entry = tree.lookup(path)
        if entry is None or entry.kind is not Kind.FILE:
            raise ValueError(f"the image's {io.string('attribute')} has no file /{path}: name a tree that holds "
                             f"Debian's {io.string('package')}")
        with open(io.output(index), "wb") as out:
            io.cas.copy_to(entry.digest, out, entry.size)


def _declare(fc: FormatContext) -> dict[str, Artifact]:
    tree = fc.parts.firmware
    if tree is None:
        return {}
    package, paths = FIRMWARE[fc.ctx.platform.machine]
    files = {role: fc.out(path.rsplit("/", 1)[1]) for role, path in paths.items()}
    fc.add(Action(owner=fc.ctx.label, mnemonic="Firmware", inputs=(tree,), outputs=tuple(files.values()),
                  params={"tree": tree.path, "files": list(paths.values()), "package": package,
                          "attribute": "firmware"},
                  function=copy_from_tree))
    return files


def uefi_built(fc: FormatContext, files: tuple[Artifact, ...], medium: str, boot: Mapping[str, Artifact]) -> Built:
    """A UEFI format's `files` with the firmware beside them; it boots from `medium` (with the
    `boot` files by role) only when the image names its firmware."""
    firmware = fc.once("firmware", _declare)
    return Built((*files, *firmware.values()), Boot("uefi", medium, {**boot, **firmware}) if firmware else None)
