"""image: a bootable image, in the spirit of LinuxKit: a kernel, a root filesystem made of package
sets and layers, `onboot` commands and supervised `services`, booted from an initramfs.

Default outputs, under `mk-out/<pkg>/<name>/`: `kernel`, `initrd.img` (zstd cpio), `cmdline`,
`sbom.spdx.json` and `manifest.json` (sha256 of each). The `tar` and `oci` output groups
(`mk image --format tar|oci`) add `rootfs.tar` and `image.oci.tar`.
"""

from __future__ import annotations

import hashlib
import json
import os

from mk.cache.tree import Entry, Kind, Tree, TreeError, dest_path, merge
from mk.engine import attrs
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.errors import MkError
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.rules import init, toolchain
from mk.rules.archive import archive_action, oci_params, write_oci
from mk.rules.deb.sbom import merge_documents
from mk.rules.images.all import FORMATS
from mk.rules.images.format import FormatContext, ImageParts
from mk.rules.providers import Boot, ImageInfo, KernelInfo, SbomInfo, TreeInfo
from mk.rules.trees import tree_inputs
from mk.rules.write_file import write

DEFAULT_CMDLINE = "console=ttyS0 panic=-1"


def assemble(io: ActionIO) -> None:
    """The root filesystem: the layers, then the generated boot files (their text comes through
    the parameters, so it is part of the key) and the `files`."""
    p = io.params
    layers = [io.read_tree(path) for path in io.strings("layers")]
    entries = []
    generated = p["generated"]
    assert isinstance(generated, list)
    for path, text, mode in generated:
        data = str(text).encode()
        entries.append(Entry(str(path), Kind.FILE, int(mode), digest=io.cas.put_bytes(data), size=len(data)))
    files = p["files"]
    assert isinstance(files, list)
    for dest, source in files:
        local = io.inputs[str(source)]
        mode = 0o755 if os.stat(local).st_mode & 0o100 else 0o644
        entries.append(Entry(str(dest), Kind.FILE, mode, digest=io.cas.put_file(local), size=os.stat(local).st_size))
    for directory in ("proc", "sys", "dev", "run", "tmp", "root"):
        entries.append(Entry(directory, Kind.DIR, 0o1777 if directory == "tmp" else 0o755 if directory != "root"
                             else 0o700))
    try:
        base = merge(layers)
        present = {e.path for e in base.entries}
        for top in ("bin", "sbin", "lib"):  # Debian 12's merged /usr, for busybox's applet links
            if top not in present:
                entries += [Entry(f"usr/{top}", Kind.DIR, 0o755), Entry(top, Kind.SYMLINK, 0o777, target=f"usr/{top}")]
        tree = merge([base, Tree.build(entries)])
    except TreeError as e:
        raise ValueError(str(e)) from None
    if not any(e.path == "usr/bin/busybox" for e in tree.entries):
        raise ValueError("the image has no /usr/bin/busybox, which its init needs: add busybox-static to 'base'")
    io.write_tree(tree)


def copy_file(io: ActionIO) -> None:
    (source,) = io.inputs.values()
    io.output().write_bytes(source.read_bytes())


def combine_sboms(io: ActionIO) -> None:
    documents = [io.inputs[path].read_text(encoding="utf-8") for path in io.strings("sboms")]
    text = merge_documents(io.string("name"), documents, io.integer("epoch"))
    io.output().write_text(text, encoding="utf-8")


def write_manifest(io: ActionIO) -> None:
    entries = {}
    for path in sorted(io.inputs):
        data = io.inputs[path].read_bytes()
        entries[os.path.basename(path)] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    io.output().write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def analyze(ctx: RuleContext) -> list[Provider]:
    name = ctx.label.name
    (kernel_info,) = ctx.providers("kernel", KernelInfo)
    layers = (*tree_inputs(ctx, "base"), kernel_info.modules)
    files, file_inputs = _files(ctx)

    def out(file: str, tree: bool = False) -> Artifact:
        return ctx.output(f"{name}/{file}", tree=tree)

    rootfs = out("rootfs.tree", tree=True)
    ctx.add_action(Action(
        owner=ctx.label, mnemonic="ImageRoot", inputs=(*layers, *file_inputs), outputs=(rootfs,),
        params={"layers": [a.path for a in layers], "generated": _generated(ctx), "files": files},
        function=assemble,
    ))
    initrd, kernel, cmdline = out("initrd.img"), out("kernel"), out("cmdline")
    ctx.add_action(archive_action(ctx, "Initrd", rootfs, initrd, "cpio", "zstd"))
    ctx.add_action(Action(owner=ctx.label, mnemonic="Copy", inputs=(kernel_info.vmlinuz,), outputs=(kernel,),
                          function=copy_file))
    ctx.add_action(Action(owner=ctx.label, mnemonic="WriteFile", inputs=(), outputs=(cmdline,),
                          params={"content": ctx.string("cmdline") + "\n", "executable": False}, function=write))
    sboms = tuple(info.document for dep in ctx.deps.get("base", ()) if (info := dep.find(SbomInfo)))
    sbom = out("sbom.spdx.json")
    ctx.add_action(Action(owner=ctx.label, mnemonic="Sbom", inputs=sboms, outputs=(sbom,),
                          params={"sboms": [s.path for s in sboms], "name": str(ctx.label),
                                  "epoch": ctx.source_date_epoch}, function=combine_sboms))
    manifest = out("manifest.json")
    ctx.add_action(Action(owner=ctx.label, mnemonic="Manifest", inputs=(kernel, initrd, cmdline, sbom),
                          outputs=(manifest,), function=write_manifest))
    rootfs_tar, oci = out("rootfs.tar"), out("image.oci.tar")
    ctx.add_action(archive_action(ctx, "Tar", rootfs, rootfs_tar, "tar", "none"))
    ctx.add_action(Action(
        owner=ctx.label, mnemonic="OciImage", inputs=(rootfs,), outputs=(oci,),
        params=oci_params((rootfs,), False, ["/init"], [], [], "", "", name, ctx.source_date_epoch, "amd64"),
        function=write_oci,
    ))
    boot = (kernel, initrd, cmdline, sbom, manifest)
    # Output groups are the formats `mk image --format` offers; "kernel+initrd" is the default set.
    groups = {"kernel+initrd": boot, "tar": (rootfs_tar,), "oci": (oci,)}
    boots = {"kernel+initrd": Boot("direct", "kernel", {"kernel": kernel, "initrd": initrd, "cmdline": cmdline})}
    has_toolchain = ctx.attrs[toolchain.ATTR.name] is not None
    parts = ImageParts(name, rootfs, rootfs_tar, kernel, kernel_info.modules, initrd, cmdline, ctx.string("cmdline"),
                       toolchain.toolchain(ctx) if has_toolchain else None, has_toolchain)
    formats = FormatContext(ctx, parts, FORMATS)
    for fmt in FORMATS.values():
        if has_toolchain or not fmt.needs_tools:  # without one, only mk's own writers are offered
            built = formats.built(fmt.name)
            groups[fmt.name] = built.files
            if built.boot is not None:
                boots[fmt.name] = built.boot
    wanted = ctx.strings("formats")
    if not has_toolchain and (needing := [f for f in wanted if FORMATS[f].needs_tools]):
        raise MkError(f"image {ctx.label}: the formats {', '.join(needing)} run tools, so the image needs a "
                      "toolchain (a `toolchain` attribute, or the `toolchain` setting in mk.toml)")
    default = tuple(dict.fromkeys((*boot, *(f for name in wanted for f in groups[name]))))
    return [DefaultInfo(files=default, groups=groups), ImageInfo(kernel, initrd, cmdline, boots)]


def _format_name(name: str) -> str:
    if name not in FORMATS and name not in ("tar", "oci"):
        raise ValueError(f"'{name}' is not an image format; choose from {', '.join(['tar', 'oci', *FORMATS])}")
    return name


def _generated(ctx: RuleContext) -> list[list[object]]:
    """The boot files mk writes into the image: path, text, mode."""
    onboot = init.onboot_script(ctx.strings("onboot"), bool(ctx.attrs["network"]), ctx.string("ssh_key_user"))
    return [
        ["init", init.INIT, 0o755],
        ["etc/inittab", init.inittab(ctx.strings("services")), 0o644],
        ["etc/hostname", f"{ctx.string('hostname') or ctx.label.name}\n", 0o644],
        ["etc/mk/onboot", onboot, 0o755],
        ["etc/mk/udhcpc.script", init.UDHCPC_SCRIPT, 0o755],
    ]


def _files(ctx: RuleContext) -> tuple[list[list[str]], tuple[Artifact, ...]]:
    value = ctx.attrs["files"]
    assert isinstance(value, dict)
    rows, inputs = [], []
    for (dest, label), dep in zip(value.items(), ctx.deps.get("files", ()), strict=True):
        if len(dep.files) != 1:
            raise MkError(f"image {ctx.label}: '{label}' for '{dest}' must be exactly one file")
        try:
            rows.append([dest_path(dest), dep.files[0].path])
        except TreeError as e:
            raise MkError(f"image {ctx.label}: destination {e}") from None
        inputs.append(dep.files[0])
    return sorted(rows), tuple(inputs)


RULE = Rule(
    name="image",
    doc=(
        "A bootable image: `kernel`, a root filesystem from `base` (deb_packages, layers, rootfs; lowest first), "
        "`files`, `onboot` commands run once in order at boot, and `services` that busybox init keeps running. "
        "A generated /init mounts /proc, /sys, /dev and /run, loads the kernel rule's modules in order and sets "
        "the hostname; with `network`, eth0 is configured by DHCP. `base` must provide /usr/bin/busybox "
        "(busybox-static). Outputs in `mk-out/<pkg>/<name>/`: kernel, initrd.img (zstd cpio), cmdline, "
        "sbom.spdx.json, manifest.json; `mk image --format tar|oci` adds rootfs.tar or image.oci.tar. Boot it "
        "with `mk run`."
    ),
    attrs=(
        Attr("kernel", attrs.LABEL, "A kernel target.", mandatory=True, providers=(KernelInfo,)),
        Attr("base", attrs.LABEL_LIST, "Trees making up the root filesystem, lowest first; the SBOMs of "
             "`deb_packages` targets among them are merged into the image's.", mandatory=True, providers=(TreeInfo,)),
        Attr("cmdline", attrs.STRING, "Kernel command line.", default=DEFAULT_CMDLINE),
        Attr("hostname", attrs.STRING, "Host name; default: the target's name.", default=""),
        Attr("onboot", attrs.STRING_LIST, "Shell commands run once at boot, in order, each after the last.",
             default=[]),
        Attr("services", attrs.STRING_LIST, "Long-running commands, restarted when they exit.", default=[]),
        Attr("files", attrs.LABEL_DICT, "Destination path -> a file label.", default={}),
        Attr("network", attrs.BOOL, "Bring eth0 up with DHCP at boot.", default=True),
        Attr("formats", attrs.records("format names", _format_name), "Formats `mk image` writes besides "
             "kernel+initrd (each is also available with `mk image --format F`): "
             + ", ".join(f"`{f.name}` ({f.doc})" for f in FORMATS.values()) + ".", default=[]),
        toolchain.ATTR,
        Attr("ssh_key_user", attrs.STRING, "If set, `mk run --ssh-key` installs the key for this user at "
             "boot (passed on the kernel command line, or through QEMU's firmware configuration for the formats "
             "that boot through firmware; never stored in the image).", default=""),
    ),
    analyze=analyze,
)
