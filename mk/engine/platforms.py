"""Target platforms: what an image is built for, as opposed to the exec platform that runs actions.

A build has one or more target platforms (`--platform linux/arm64`); the host's own is the
default. Analysis configures each target for a platform only when its rule reads the platform
or a dependency was configured for it: a layer of plain files is analysed once, keyed and placed
once, and shared by every platform. Outputs of a target configured for a platform other than the
host's live under a folder named after it (`linux-arm64/`), in the action graph as in mk-out,
so two platforms never collide and the host's own outputs keep the paths they always had.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

from mk.engine.errors import MkError

# Machine names (uname -m) of the architectures mk builds for, by the name platforms use.
_MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
ARCHITECTURES = tuple(_MACHINES)


@dataclass(frozen=True, order=True)
class Platform:
    os: str
    arch: str  # as Debian, Go and OCI name it: amd64, arm64

    def __str__(self) -> str:
        return f"{self.os}/{self.arch}"

    @property
    def machine(self) -> str:
        """What `uname -m` says on it."""
        return _MACHINES[self.arch]

    @property
    def folder(self) -> str:
        """The folder its outputs go under, when it is not the host's platform."""
        return f"{self.os}-{self.arch}"

    @staticmethod
    def parse(text: str) -> Platform:
        os_name, _, arch = text.partition("/")
        if os_name != "linux" or arch not in _MACHINES:
            known = ", ".join(f"linux/{a}" for a in sorted(_MACHINES))
            raise MkError(f"unknown platform '{text}' (mk builds for: {known})")
        return Platform(os_name, arch)


@functools.cache
def host_platform() -> Platform:
    """The platform of this machine: the exec platform, and the default target platform."""
    machine = platform.machine()
    for arch, name in _MACHINES.items():
        if name == machine:
            return Platform("linux", arch)
    raise MkError(f"mk runs on {', '.join(_MACHINES.values())} machines, not on {machine}")


def output_prefix(target: Platform) -> str:
    """What a target configured for `target` puts before its output paths."""
    return "" if target == host_platform() else f"{target.folder}/"


def requested(texts: tuple[str, ...], setting: str | None = None) -> tuple[Platform, ...]:
    """The target platforms a command line asks for, once each in the order given; if none, the
    workspace's `platform` setting, else the host's."""
    found = tuple(dict.fromkeys(Platform.parse(t) for t in texts))
    if not found and setting is not None:
        try:
            found = (Platform.parse(setting),)
        except MkError as e:
            raise MkError(f"mk.toml: the platform setting: {e.message}") from None
    return found or (host_platform(),)


def graph_key_parts(platforms: tuple[Platform, ...]) -> list[str]:
    """What the analysis cache's key adds for them: nothing for the host's alone, so its graph is the one
    it always was."""
    return [] if platforms == (host_platform(),) else [f"platform:{p}" for p in platforms]
