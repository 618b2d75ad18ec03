"""UEFI firmware for `mk run`: OVMF's code and its variable store, copied out of a locked package's
tree (Debian's ovmf, which the image's `firmware` attribute names) beside the UEFI formats, so
that QEMU never boots them with whatever OVMF the host has."""

from __future__ import annotations

from collections.abc import Mapping

from mk.cache.tree import Kind
from mk.engine.actions import Action, ActionIO, Artifact
from mk.rules.images.format import Built, FormatContext
from mk.rules.providers import Boot

# The 4 MiB builds, without Secure Boot: they run on QEMU's default machine, with no SMM.
FILES = {"firmware_code": "usr/share/OVMF/OVMF_CODE_4M.fd", "firmware_vars": "usr/share/OVMF/OVMF_VARS_4M.fd"}


def copy_firmware(io: ActionIO) -> None:
    tree = io.read_tree(io.string("tree"))
    for index, path in enumerate(io.strings("files")):
        entry = tree.lookup(path)
        if entry is None or entry.kind is not Kind.FILE:
            raise ValueError(f"the image's firmware has no file /{path}: name a tree that holds Debian's ovmf")
        with open(io.output(index), "wb") as out:
            io.cas.copy_to(entry.digest, out, entry.size)


def _declare(fc: FormatContext) -> dict[str, Artifact]:
    tree = fc.parts.firmware
    if tree is None:
        return {}
    files = {role: fc.out(path.rsplit("/", 1)[1]) for role, path in FILES.items()}
    fc.add(Action(owner=fc.ctx.label, mnemonic="Firmware", inputs=(tree,), outputs=tuple(files.values()),
                  params={"tree": tree.path, "files": list(FILES.values())}, function=copy_firmware))
    return files


def uefi_built(fc: FormatContext, files: tuple[Artifact, ...], medium: str, boot: Mapping[str, Artifact]) -> Built:
    """A UEFI format's `files` with the firmware beside them; it boots from `medium` (with the
    `boot` files by role) only when the image names its firmware."""
    firmware = fc.once("firmware", _declare)
    return Built((*files, *firmware.values()), Boot("uefi", medium, {**boot, **firmware}) if firmware else None)
