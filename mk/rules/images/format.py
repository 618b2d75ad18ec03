"""Image formats: what `image(formats = [...])` and `mk image --format F` can make of an image.

A format declares, at analysis, the actions that turn the image's parts (its root tree, that
tree as a tar, the kernel, the initrd and the command line) into deployable files: a root
filesystem, a unified kernel image, a disk, an ISO. Each is an ordinary cached action; those
that run a tool (mksquashfs, mkfs.fat, xorriso, ...) run it in the sandbox on the image's
toolchain, never on the host's tools. A format may build on others (a disk holds a UKI and a
root filesystem): `FormatContext.built` declares each once.

Every format's outputs go into `mk-out/<pkg>/<image>/`; its `Built.boot` says how `mk run
--format F` starts it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from mk.engine.actions import Action, Artifact
from mk.engine.errors import MkError
from mk.engine.rule_api import RuleContext
from mk.rules.providers import Boot

T = TypeVar("T")
BASH = "/bin/bash"
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # mke2fs, mkfs.fat, sfdisk and veritysetup live in sbin

# `uuid_of FILE`: a UUID from the first 32 hex digits of the file's sha256, marked as version 4
# (random-like, RFC 4122 variant) so that tools which check the form accept it.
UUID_OF = r"""uuid_of() {
    sha256sum "$1" | cut -c1-32 | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12})$/\1-\2-4\3-8\4-\5/'
}"""


@dataclass(frozen=True)
class Built:
    """What one format made: its files (for its output group) and how it boots, if it does."""

    files: tuple[Artifact, ...]
    boot: Boot | None = None


@dataclass(frozen=True)
class ImageParts:
    """What every format starts from, made by the image rule."""

    name: str  # the image target's name: outputs go into mk-out/<pkg>/<name>/
    tree: Artifact  # the root filesystem's tree manifest
    tar: Artifact  # the same tree as an uncompressed tar (owners, modes and devices included)
    kernel: Artifact
    modules: Artifact  # the kernel rule's modules tree, with their load order
    initrd: Artifact
    cmdline: Artifact
    cmdline_text: str
    toolchain: Artifact | None  # the tree the format commands run on; None: the host's tools
    has_toolchain: bool  # False when the image names none at all (then no tool format is offered)
    verity: bool = False  # the disk formats protect their root with dm-verity
    firmware: Artifact | None = None  # a tree holding OVMF or AAVMF, which `mk run` boots the UEFI formats with
    efi_boot: Artifact | None = None  # a tree holding systemd-boot-efi for the image's platform (see efi_boot.py)


@dataclass(frozen=True)
class Format:
    name: str
    doc: str
    declare: Callable[[FormatContext], Built]
    needs_tools: bool = True  # runs commands, so needs the image's toolchain


@dataclass
class FormatContext:
    """Handed to a format's `declare`; adds actions to the image's analysis."""

    ctx: RuleContext
    parts: ImageParts
    formats: Mapping[str, Format]
    _done: dict[str, object] = field(default_factory=dict)
    _declaring: list[str] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        return self.ctx.source_date_epoch

    def out(self, file: str, tree: bool = False) -> Artifact:
        return self.ctx.output(f"{self.parts.name}/{file}", tree=tree)

    def built(self, name: str) -> Built:
        """The outputs of format `name`, declaring its actions on first use."""
        return self.once(name, self.formats[name].declare)

    def once(self, name: str, declare: Callable[[FormatContext], T]) -> T:
        """What `declare` gives, declaring its actions only the first time `name` is asked for: a
        part several formats share (the stage-1 initrd, say) is made once."""
        if name not in self._done:
            if name in self._declaring:
                raise MkError(f"image formats depend on each other in a loop: {' -> '.join([*self._declaring, name])}")
            self._declaring.append(name)
            try:
                self._done[name] = declare(self)
            finally:
                self._declaring.pop()
        found: T = self._done[name]  # type: ignore[assignment]  # (stored by the same `declare`)
        return found

    def command(self, mnemonic: str, inputs: tuple[Artifact, ...], outputs: tuple[Artifact, ...], script: str,
                env: Mapping[str, str] | None = None) -> None:
        """A bash `script` run in the sandbox on the image's toolchain. It sees `inputs` at their
        workspace-relative paths (`$1`... are not used: the script names them), writes `outputs`,
        and has SOURCE_DATE_EPOCH set, as every format tool should honour it."""
        toolchain = self.parts.toolchain
        self.ctx.add_action(Action(
            owner=self.ctx.label, mnemonic=mnemonic,
            inputs=tuple(dict.fromkeys((*inputs, *((toolchain,) if toolchain else ())))),
            outputs=outputs,
            params={"env": {"SOURCE_DATE_EPOCH": str(self.epoch), "PATH": TOOL_PATH, **(env or {})}},
            command=(BASH, "-e", "-o", "pipefail", "-c", script),
            toolchain=toolchain,
        ))

    def add(self, action: Action) -> None:
        """An in-process action (a writer mk implements itself)."""
        self.ctx.add_action(action)
