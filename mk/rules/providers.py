"""The providers rule families exchange: what a target gives, by kind, never by file name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mk.engine.actions import Artifact
from mk.engine.rule_api import Provider


@dataclass(frozen=True)
class TreeInfo(Provider):
    """A filesystem tree (a tree artifact): layers, root filesystems, package sets, module sets."""

    tree: Artifact


@dataclass(frozen=True)
class SbomInfo(Provider):
    """An SPDX document describing the packages a target holds."""

    document: Artifact


@dataclass(frozen=True)
class KernelInfo(Provider):
    """A bootable kernel image and the tree of modules (with their load order) that go with it."""

    vmlinuz: Artifact
    modules: Artifact


@dataclass(frozen=True)
class Boot:
    """How QEMU starts a format: by `firmware` ("direct": -kernel/-initrd; "bios": SeaBIOS;
    "uefi": OVMF) from `medium` ("kernel", "disk" or "cdrom") in `disk_format` (raw, qcow2, vpc).
    `files` names the artifacts by role: kernel, initrd, cmdline, disk, cdrom."""

    firmware: str
    medium: str
    files: Mapping[str, Artifact]
    disk_format: str = "raw"


@dataclass(frozen=True)
class ImageInfo(Provider):
    """A bootable image: what a machine (QEMU, `mk run`) needs to start it, and its root
    filesystem's tree (what `mk ls` and `mk diff` show)."""

    kernel: Artifact
    initrd: Artifact
    cmdline: Artifact
    root: Artifact
    ssh_key_user: str  # who `mk run --ssh-key` authorizes at boot; "" when nobody (the key is then ignored)
    boots: Mapping[str, Boot] = field(default_factory=dict)  # by format name: how `mk run --format` starts it
