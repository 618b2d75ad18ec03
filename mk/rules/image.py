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
from pathlib import Path

from mk.cache.tree import Entry, Kind, Tree, TreeError, dest_path, merge
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.errors import MkError
from mk.engine.rule_api import Attr, AttrType, Rule, RuleContext, TargetInfo
from mk.rules import init
from mk.rules.archive import write_archive, write_oci
from mk.rules.deb.sbom import merge_documents
from mk.rules.rootfs import TREE_SUFFIX, param_strings, read_tree, tree_inputs

DEFAULT_CMDLINE = "console=ttyS0 panic=-1"


def assemble(io: ActionIO) -> None:
    p = io.params
    layers = [read_tree(io, path) for path in param_strings(io, "layers")]
    generated = {
        "init": (init.INIT, 0o755),
        "etc/inittab": (init.inittab(param_strings(io, "services")), 0o644),
        "etc/hostname": (f"{p['hostname']}\n", 0o644),
        "etc/mk/onboot": (init.onboot_script(param_strings(io, "onboot"), bool(p["network"]),
                                             str(p["ssh_key_user"])), 0o755),
        "etc/mk/udhcpc.script": (init.UDHCPC_SCRIPT, 0o755),
    }
    entries = []
    for path, (text, mode) in generated.items():
        data = text.encode()
        entries.append(Entry(path, Kind.FILE, mode, digest=io.cas.put_bytes(data), size=len(data)))
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
    _output(io, TREE_SUFFIX).write_bytes(tree.encode())


def copy_file(io: ActionIO) -> None:
    (source,) = io.inputs.values()
    next(iter(io.outputs.values())).write_bytes(source.read_bytes())


def write_text(io: ActionIO) -> None:
    next(iter(io.outputs.values())).write_text(str(io.params["text"]), encoding="utf-8")


def combine_sboms(io: ActionIO) -> None:
    documents = [io.inputs[path].read_text(encoding="utf-8") for path in param_strings(io, "sboms")]
    text = merge_documents(str(io.params["name"]), documents, int(str(io.params["epoch"])))
    next(iter(io.outputs.values())).write_text(text, encoding="utf-8")


def write_manifest(io: ActionIO) -> None:
    entries = {}
    for path in sorted(io.inputs):
        data = io.inputs[path].read_bytes()
        entries[os.path.basename(path)] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    _output(io, ".json").write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _output(io: ActionIO, suffix: str) -> Path:
    return next(path for name, path in io.outputs.items() if name.endswith(suffix))


def analyze(ctx: RuleContext) -> TargetInfo:
    name = ctx.label.name
    kernel_dep = ctx.deps["kernel"][0]
    vmlinuz = next((f for f in kernel_dep.files if f.path.endswith(".vmlinuz")), None)
    modules = next((f for f in kernel_dep.files if f.path.endswith(TREE_SUFFIX)), None)
    if vmlinuz is None or modules is None:
        raise MkError(f"image {ctx.label}: 'kernel' must name a kernel target")
    layers = (*tree_inputs(ctx, "base"), modules)
    files, file_inputs = _files(ctx)

    def out(file: str) -> Artifact:
        return ctx.output(f"{name}/{file}")

    rootfs = out("rootfs" + TREE_SUFFIX)
    ctx.add_action(Action(
        owner=ctx.label, mnemonic="ImageRoot", version=2, inputs=(*layers, *file_inputs), outputs=(rootfs,),
        params={"layers": [a.path for a in layers], "hostname": ctx.string("hostname") or name,
                "onboot": ctx.strings("onboot"), "services": ctx.strings("services"), "files": files,
                "network": ctx.attrs["network"], "ssh_key_user": ctx.string("ssh_key_user")},
        function=assemble,
    ))
    initrd, kernel, cmdline = out("initrd.img"), out("kernel"), out("cmdline")
    ctx.add_action(Action(
        owner=ctx.label, mnemonic="Initrd", version=1, inputs=(rootfs,), outputs=(initrd,),
        params={"src": rootfs.path, "format": "cpio", "compression": "zstd", "mtime": ctx.source_date_epoch},
        function=write_archive,
    ))
    ctx.add_action(Action(owner=ctx.label, mnemonic="Copy", version=1, inputs=(vmlinuz,), outputs=(kernel,),
                          function=copy_file))
    ctx.add_action(Action(owner=ctx.label, mnemonic="WriteFile", version=1, inputs=(), outputs=(cmdline,),
                          params={"text": ctx.string("cmdline") + "\n"}, function=write_text))
    sboms = tuple(f for dep in ctx.deps.get("base", ()) for f in dep.files if f.path.endswith(".spdx.json"))
    sbom = out("sbom.spdx.json")
    ctx.add_action(Action(owner=ctx.label, mnemonic="Sbom", version=1, inputs=sboms, outputs=(sbom,),
                          params={"sboms": [s.path for s in sboms], "name": str(ctx.label),
                                  "epoch": ctx.source_date_epoch}, function=combine_sboms))
    manifest = out("manifest.json")
    ctx.add_action(Action(owner=ctx.label, mnemonic="Manifest", version=1, inputs=(kernel, initrd, cmdline, sbom),
                          outputs=(manifest,), function=write_manifest))
    rootfs_tar, oci = out("rootfs.tar"), out("image.oci.tar")
    ctx.add_action(Action(
        owner=ctx.label, mnemonic="Tar", version=2, inputs=(rootfs,), outputs=(rootfs_tar,),
        params={"src": rootfs.path, "format": "tar", "compression": "none", "mtime": ctx.source_date_epoch},
        function=write_archive,
    ))
    ctx.add_action(Action(
        owner=ctx.label, mnemonic="OciImage", version=2, inputs=(rootfs,), outputs=(oci,),
        params={"layers": [rootfs.path], "flatten": False, "architecture": "amd64", "entrypoint": ["/init"],
                "cmd": [], "env": [], "workdir": "", "user": "", "tag": name, "mtime": ctx.source_date_epoch},
        function=write_oci,
    ))
    return TargetInfo(files=(kernel, initrd, cmdline, sbom, manifest),
                      groups={"tar": (rootfs_tar,), "oci": (oci,)})


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
        Attr("kernel", AttrType.LABEL, "A kernel target.", mandatory=True),
        Attr("base", AttrType.LABEL_LIST, "Trees making up the root filesystem, lowest first.", mandatory=True),
        Attr("cmdline", AttrType.STRING, "Kernel command line.", default=DEFAULT_CMDLINE),
        Attr("hostname", AttrType.STRING, "Host name; default: the target's name.", default=""),
        Attr("onboot", AttrType.STRING_LIST, "Shell commands run once at boot, in order, each after the last.",
             default=[]),
        Attr("services", AttrType.STRING_LIST, "Long-running commands, restarted when they exit.", default=[]),
        Attr("files", AttrType.STRING_KEYED_LABEL_DICT, "Destination path -> a file label.", default={}),
        Attr("network", AttrType.BOOL, "Bring eth0 up with DHCP at boot.", default=True),
        Attr("ssh_key_user", AttrType.STRING, "If set, `mk run --ssh-key` installs the key for this user at "
             "boot (passed on the kernel command line, never stored in the image).", default=""),
    ),
    analyze=analyze,
)
