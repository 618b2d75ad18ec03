"""The providers rule families exchange: what a target gives, by kind, never by file name."""

from __future__ import annotations

from dataclasses import dataclass

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
class ImageInfo(Provider):
    """A bootable image: what a machine (QEMU, `mk run`) needs to start it, and its root
    filesystem's tree (what `mk ls` and `mk diff` show)."""

    kernel: Artifact
    initrd: Artifact
    cmdline: Artifact
    root: Artifact
    ssh_key_user: str  # who `mk run --ssh-key` authorizes at boot; "" when nobody (the key is then ignored)
