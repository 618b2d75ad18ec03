"""kernel: a kernel image and the modules an image needs, with their whole dependency closure.

The closure comes from each module's own `.modinfo` section (`depends=`), read straight from the
ELF file, so it does not need `depmod` or the `modules.dep` a package's postinst would write.
mk writes `modules.dep` for the image and `etc/mk/modules.load`: the modules in load order,
dependencies first (`virtio_ring` before `virtio` before `virtio_pci` and `virtio_net`).
"""

from __future__ import annotations

import lzma
import posixpath
import re

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree
from mk.engine import attrs
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.errors import did_you_mean
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.rules.elf import sections
from mk.rules.providers import KernelInfo, TreeInfo
from mk.rules.trees import tree_inputs

LOAD_ORDER = "etc/mk/modules.load"
_MODULE = re.compile(r"^usr/lib/modules/([^/]+)/(.+\.ko(?:\.xz|\.zst)?)$")


def modinfo_depends(elf: bytes) -> list[str]:
    """The `depends=` list of a kernel module's .modinfo section (64-bit little-endian ELF)."""
    modinfo = sections(elf).get(".modinfo")
    if modinfo is None:
        raise ValueError("no .modinfo section")
    for field in modinfo.split(b"\0"):
        if field.startswith(b"depends="):
            return [d for d in field[8:].decode().split(",") if d]
    return []


def _module_bytes(cas: ContentStore, entry: Entry) -> bytes:
    data = cas.read_bytes(entry.digest, entry.size)
    if entry.path.endswith(".xz"):
        return lzma.decompress(data)
    if entry.path.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30)
    return data


def _name(path: str) -> str:
    return posixpath.basename(path).split(".ko")[0].replace("-", "_")


def select(io: ActionIO) -> None:
    tree = io.read_tree(io.string("packages"))
    kernels = [e for e in tree.entries if re.fullmatch(r"boot/vmlinuz-.+", e.path) and e.kind is Kind.FILE]
    if len(kernels) != 1:
        raise ValueError(f"expected one boot/vmlinuz-* in the packages, found {len(kernels)}")
    release = kernels[0].path.removeprefix("boot/vmlinuz-")
    modules = {}
    for e in tree.entries:
        m = _MODULE.match(e.path)
        if m and m.group(1) == release and e.kind is Kind.FILE:
            modules[_name(e.path)] = e
    builtin = _builtin(io.cas, tree, release)
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, needed_by: str) -> None:
        if name in order or name in builtin:
            return
        if name not in modules:
            hint = did_you_mean(name, modules)
            raise ValueError(f"module '{name}' (needed by {needed_by}) is not in kernel {release}{hint}")
        if name in visiting:
            raise ValueError(f"module dependency cycle through '{name}'")
        visiting.add(name)
        for dependency in sorted(modinfo_depends(_module_bytes(io.cas, modules[name]))):
            visit(dependency.replace("-", "_"), name)
        visiting.discard(name)
        order.append(name)

    for wanted in io.strings("modules"):
        visit(wanted.replace("-", "_"), "the kernel rule")
    base = f"usr/lib/modules/{release}"
    depends = {n: sorted(modinfo_depends(_module_bytes(io.cas, modules[n]))) for n in order}
    modules_dep = "".join(
        f"{modules[n].path.removeprefix(base + '/')}:"
        + "".join(f" {modules[d.replace('-', '_')].path.removeprefix(base + '/')}" for d in depends[n]
                  if d.replace("-", "_") in modules)
        + "\n"
        for n in sorted(order)
    )
    load = "".join(f"/{modules[n].path}\n" for n in order)
    entries = [modules[n] for n in order]
    generated = ((f"{base}/modules.dep", modules_dep), (LOAD_ORDER, load), ("etc/mk/kernel.release", release + "\n"))
    for path, text in generated:
        data = text.encode()
        entries.append(Entry(path, Kind.FILE, 0o644, digest=io.cas.put_bytes(data), size=len(data)))
    with open(io.output(0), "wb") as out:
        io.cas.copy_to(kernels[0].digest, out, kernels[0].size)
    io.write_tree(Tree.build(entries), 1)


def _builtin(cas: ContentStore, tree: Tree, release: str) -> set[str]:
    entry = next((e for e in tree.entries if e.path == f"usr/lib/modules/{release}/modules.builtin"), None)
    if entry is None:
        return set()
    return {_name(line) for line in cas.read_bytes(entry.digest, entry.size).decode().splitlines() if line}


def kernel_info(ctx: RuleContext, packages: Artifact) -> KernelInfo:
    """Declares the action that takes the kernel and the `modules` attribute's modules (with their
    dependencies) out of `packages`, a tree laid out as a linux-image package is: boot/vmlinuz-*,
    usr/lib/modules/<release>/."""
    vmlinuz = ctx.output(f"{ctx.label.name}.vmlinuz")
    modules = ctx.output(f"{ctx.label.name}.modules.tree", tree=True)
    ctx.add_action(Action(
        owner=ctx.label, mnemonic="KernelModules", inputs=(packages,), outputs=(vmlinuz, modules),
        params={"packages": packages.path, "modules": sorted(ctx.strings("modules"))}, function=select,
    ))
    return KernelInfo(vmlinuz, modules)


def analyze(ctx: RuleContext) -> list[Provider]:
    (packages,) = tree_inputs(ctx, "packages")
    info = kernel_info(ctx, packages)
    return [DefaultInfo(files=(info.vmlinuz, info.modules)), info]


MODULES_ATTR = Attr("modules", attrs.STRING_LIST, "Modules to load at boot, e.g. ['virtio_pci', 'virtio_net']; "
                    "one built into the kernel is skipped.", default=[])


RULE = Rule(
    name="kernel",
    doc=(
        "A kernel from a Debian linux-image package and the `modules` an image needs, with every module they "
        "depend on (read from each module's .modinfo, so no depmod). Outputs `NAME.vmlinuz` and "
        "`NAME.modules.tree`, which holds the modules, a `modules.dep`, `/etc/mk/kernel.release` and "
        "`/etc/mk/modules.load` (load order, dependencies first), which the `image` rule's init uses."
    ),
    attrs=(
        Attr("packages", attrs.LABEL, "A deb_packages target that includes a linux-image package.", mandatory=True,
             providers=(TreeInfo,)),
        MODULES_ATTR,
    ),
    analyze=analyze,
)
