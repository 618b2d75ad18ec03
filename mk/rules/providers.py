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
    disks: tuple[str, ...] = ()  # the persistent disks it mounts, by name: what `mk run --disk NAME=SIZE` attaches
    machine: str = "x86_64"  # what `uname -m` says inside it: the machine QEMU emulates


@dataclass(frozen=True)
class OciImageInfo(Provider):
    """An OCI image mk builds: its layers (lowest first) and the configuration a runtime starts it with."""

    layers: tuple[Artifact, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[str, ...]  # NAME=value
    workdir: str
    user: str


@dataclass(frozen=True)
class ServiceInfo(Provider):
    """A program an image runs as an isolated container (an OCI runtime bundle started by crun):
    a long-running service, or an `onboot` step run to completion. `layers` empty: its root is a
    read-only view of the image's own root."""

    name: str
    onboot: bool
    layers: tuple[Artifact, ...]
    command: tuple[str, ...]
    user: str  # a name or a number, looked up in the service's root at build time
    group: str  # "" for the user's own group
    capabilities: tuple[str, ...]
    network: str  # "own" or "host"
    pid: str  # "own" or "host"
    writable: tuple[tuple[str, str], ...]  # (absolute path, "tmpfs" or "persistent"), sorted
    env: tuple[str, ...]  # NAME=value
    workdir: str
    restart: str  # "always", "on-failure" or "never"
    restarts: int  # at most this many restarts, then it stays down
    after: tuple[str, ...]  # names of the services it starts after
