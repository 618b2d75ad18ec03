"""Built-in rules, one module per rule family. `RULES` is what BUILD files can call."""

from mk.engine.rule_api import Rule
from mk.rules import archive, filegroup, genrule, image, kernel, layer, rootfs, write_file
from mk.rules.deb import rule as deb

RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        filegroup.RULE,
        write_file.RULE,
        genrule.RULE,
        layer.RULE,
        rootfs.RULE,
        archive.TAR_RULE,
        archive.CPIO_RULE,
        archive.OCI_RULE,
        deb.RULE,
        kernel.RULE,
        image.RULE,
    )
}
