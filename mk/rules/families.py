"""The rule families mk ships, as the command line hands them to the engine's registry.

Each names its parts by `module:attribute`, so nothing here imports a rule: a no-op build or
`mk cache stats` loads only what it uses.
"""

from __future__ import annotations

from mk.engine.registry import Family, Registry
from mk.engine.workspace import Setting
from mk.rules.cache_parts import DEB_SHA256, DEBIAN_INDICES, VM

FILES = Family(
    name="files",
    rules=("mk.rules.filegroup:RULE", "mk.rules.write_file:RULE", "mk.rules.genrule:RULE"),
)

TREES = Family(
    name="trees",
    rules=("mk.rules.layer:RULE", "mk.rules.rootfs:RULE", "mk.rules.archive:TAR_RULE", "mk.rules.archive:CPIO_RULE",
           "mk.rules.archive:OCI_RULE"),
)

DEBIAN = Family(
    name="debian",
    rules=("mk.rules.deb.rule:RULE",),
    settings=(
        Setting("debian_mirror", "string", "Debian archive base URL; default: this machine's apt sources.",
                env="MK_DEBIAN_MIRROR"),
        Setting("debian_security_mirror", "string", "Debian security archive base URL; default: derived from "
                "`debian_mirror`, or this machine's apt sources.", env="MK_DEBIAN_SECURITY_MIRROR"),
    ),
    cache_parts=(DEBIAN_INDICES, DEB_SHA256),
    sources={"debian": "mk.rules.deb.commands:debian_source"},
    commands={"lock": "mk.rules.deb.commands:lock"},
)

KERNEL = Family(name="kernel", rules=("mk.rules.kernel:RULE",))

IMAGE = Family(name="image", rules=("mk.rules.image:RULE",), runners=("mk.rules.qemu:RUNNER",), cache_parts=(VM,))


def registry() -> Registry:
    return Registry((FILES, TREES, DEBIAN, KERNEL, IMAGE))
