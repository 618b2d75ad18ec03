"""The rule families mk ships, as the command line hands them to the engine's registry.

Each names its parts by `module:attribute`, so nothing here imports a rule: a no-op build or
`mk cache stats` loads only what it uses.
"""

from __future__ import annotations

from mk.engine.registry import Family, Registry
from mk.engine.workspace import Setting
from mk.rules.cache_parts import DEBIAN_INDICES, VM

FILES = Family(
    name="files",
    rules=("mk.rules.filegroup:RULE", "mk.rules.write_file:RULE", "mk.rules.genrule:RULE"),
)

TREES = Family(
    name="trees",
    rules=("mk.rules.layer:RULE", "mk.rules.rootfs:RULE", "mk.rules.archive:TAR_RULE", "mk.rules.archive:CPIO_RULE",
           "mk.rules.archive:OCI_RULE", "mk.rules.oci_index:RULE"),
)

DEBIAN = Family(
    name="debian",
    rules=("mk.rules.deb.rule:RULE", "mk.rules.deb.source_rule:RULE"),
    settings=(
        Setting("debian_mirror", "string", "Debian archive base URL; default: this machine's apt sources.",
                env="MK_DEBIAN_MIRROR"),
        Setting("debian_security_mirror", "string", "Debian security archive base URL; default: derived from "
                "`debian_mirror`, or this machine's apt sources.", env="MK_DEBIAN_SECURITY_MIRROR"),
        Setting("debian_snapshot", "string", "Base URL of a snapshot archive laid out as Debian's own "
                "(`BASE/archive/debian/TIME/...`, `BASE/mr/timestamp/`): `mk lock` records the time whose "
                "snapshot holds the locked packages, and a package that has left the mirror is fetched from "
                "there.", env="MK_DEBIAN_SNAPSHOT"),
        Setting("debian_extra_mirrors", "list of strings", "More Debian archive base URLs, tried last for a package "
                "that no other place has (`MK_DEBIAN_EXTRA_MIRRORS`: comma-separated).",
                env="MK_DEBIAN_EXTRA_MIRRORS", default=[]),
    ),
    cache_parts=(DEBIAN_INDICES,),
    sources={"debian": "mk.rules.deb.commands:debian_source"},
    commands={"lock": "mk.rules.deb.commands:lock"},
)

# Building from source: packages compiled in the sandbox, and sources fetched by sha256.
SOURCE = Family(name="source", rules=("mk.rules.package:RULE", "mk.rules.http_archive:RULE"))

KERNEL = Family(name="kernel", rules=("mk.rules.kernel:RULE", "mk.rules.kernel_build:RULE"))

IMAGE = Family(name="image", rules=("mk.rules.image:RULE", "mk.rules.service:RULE"), runners=("mk.rules.qemu:RUNNER",),
               cache_parts=(VM,))


def registry() -> Registry:
    return Registry((FILES, TREES, DEBIAN, SOURCE, KERNEL, IMAGE))
