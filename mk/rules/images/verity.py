"""dm-verity for the root filesystem of the disk formats (`image(verity = True)`).

`veritysetup format` writes the hash tree, after a superblock, and prints the root hash. The salt
is the root filesystem's sha256 and the superblock's UUID derives from the salt, so both change
exactly when the content does. Besides the tree it writes `root.roothash` and the kernel
command-line words with which the stage-1 initrd opens the root (see stage1.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from mk.engine.actions import Artifact
from mk.rules.images.format import UUID_OF, FormatContext


@dataclass(frozen=True)
class Verity:
    tree: Artifact  # the hash tree, for a partition of its own
    roothash: Artifact  # the root hash in hex, one line
    cmdline: Artifact  # `mk.verity.blocks=N mk.verity.salt=HEX mk.roothash=HEX`


def verity(fc: FormatContext) -> Verity:
    """The hash tree of the squashfs root; call it through `fc.once("verity", verity)`."""
    root = fc.built("squashfs").files[0]
    made = Verity(fc.out("root.verity"), fc.out("root.roothash"), fc.out("root.verity.cmdline"))
    fc.command("Verity", (root,), (made.tree, made.roothash, made.cmdline), f"""{UUID_OF}
root={root.path}
# veritysetup would leave a partial last block out of the tree, unchecked: refuse one.
if [ $(( $(stat -c %s "$root") % 4096 )) != 0 ]; then
    echo "$root is not a whole number of 4 KiB blocks" >&2
    exit 1
fi
salt=$(sha256sum "$root" | cut -c1-64)
printf %s "$salt" > /tmp/salt
veritysetup format --hash sha256 --data-block-size 4096 --hash-block-size 4096 --salt "$salt" \\
    --uuid "$(uuid_of /tmp/salt)" "$root" {made.tree.path} > /tmp/report
field() {{ sed -n "s/^$1:[[:space:]]*//p" /tmp/report; }}
field "Root hash" > {made.roothash.path}
printf 'mk.verity.blocks=%s mk.verity.salt=%s mk.roothash=%s\\n' "$(field "Data blocks")" "$salt" \\
    "$(field "Root hash")" > {made.cmdline.path}
""")
    return made
