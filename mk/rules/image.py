"""image: a bootable image, in the spirit of LinuxKit: a kernel, a root filesystem made of package
sets and layers, `onboot` commands and supervised `services`, booted from an initramfs.

Default outputs, under `mk-out/<pkg>/<name>/`: `kernel`, `initrd.img` (zstd cpio segments,
concatenated: see images/initrd.py), `cmdline`, `sbom.spdx.json` and `manifest.json`. The `tar`
and `oci` output groups (`mk image --format tar|oci`) add `rootfs.tar` and `image.oci.tar`. The
manifest gives the sha256 and size of every other file the build places there, the formats asked
for included.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from mk.cache.tree import Entry, Kind, Tree, TreeError, dest_path, merge
from mk.engine import attrs
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.errors import MkError
from mk.engine.platforms import host_platform
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.rules import init, toolchain
from mk.rules.archive import archive_action, oci_actions
from mk.rules.bundles import bundle
from mk.rules.deb.sbom import merge_documents
from mk.rules.formats.oci import ImageConfig
from mk.rules.image_check import RootView, check_commands
from mk.rules.images.all import FORMATS, UEFI, X86_64_ONLY
from mk.rules.images.format import FormatContext, ImageParts
from mk.rules.images.initrd import SEGMENTS, add_initrd_actions, write_segment_trees
from mk.rules.images.stage1 import VERITY_STATUS
from mk.rules.providers import Boot, ImageInfo, KernelInfo, SbomInfo, ServiceInfo, TreeInfo
from mk.rules.service import check_path
from mk.rules.supervise import CGROUPS, SUPERVISORS, persistent_mounts, supervisor
from mk.rules.trees import tree_inputs
from mk.rules.write_file import write

# The serial console QEMU's machine for each architecture has: the PC's 16550, the virt board's PL011.
SERIAL_CONSOLE = {"amd64": "ttyS0", "arm64": "ttyAMA0"}


def default_cmdline(arch: str) -> str:
    return f"console={SERIAL_CONSOLE[arch]} panic=-1"
_DISK = re.compile(r"[a-z0-9][a-z0-9_-]{0,19}")  # a virtio disk's serial number holds 20 bytes


def assemble(io: ActionIO) -> None:
    """The root filesystem: the layers, then the generated boot files (their text comes through
    the parameters, so it is part of the key) and the `files`; refused when a command of the image
    names a program it does not have."""
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
    problems = check_commands(tree, io.cas, io.strings("services"), io.strings("onboot"))
    tree = _with_containers(io, tree, problems)
    if problems:
        raise ValueError("\n  ".join(problems))
    io.write_tree(tree)
    write_segment_trees(io, tree, layers, first_output=1)


def _with_containers(io: ActionIO, tree: Tree, problems: list[str]) -> Tree:
    """The image's root with each service's bundle and supervisor; what is wrong goes to `problems`."""
    containers, persistent = io.params["containers"], io.params["persistent"]
    assert isinstance(containers, list) and isinstance(persistent, dict)
    view = RootView(tree, io.cas)
    needed = [("crun", "runs its services", "crun")] if containers else []
    needed += [(p, "formats its persistent disks", "e2fsprogs") for p in ("mkfs.ext4", "dumpe2fs") if persistent]
    problems += [f"the image {why} with {program}, which it lacks ({reason}): add Debian's {package} to 'base'"
                 for program, why, package in needed if (reason := view.why_not(program))]
    entries = []
    for spec in containers:
        assert isinstance(spec, dict)
        layers = [io.read_tree(str(path)) for path in spec["layers"]]
        made = bundle(tree, io.cas, spec, layers, frozenset(persistent))
        problems += made.problems
        text = supervisor(spec, made.owner, {str(k): str(v) for k, v in persistent.items()}).encode()
        entries += [*made.entries, Entry(f"{SUPERVISORS}/{spec['name']}", Kind.FILE, 0o755,
                                         digest=io.cas.put_bytes(text), size=len(text))]
    try:
        return merge([tree, Tree.build(entries)]) if entries else tree
    except TreeError as e:
        raise ValueError(str(e)) from None


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
        # Remembered by the blob's digest: an edit's build hashes its new initrd, not the kernel again.
        sha256, size = io.cas.sha256(io.digests[path])
        entries[os.path.basename(path)] = {"sha256": sha256, "size": size}
    io.output().write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def analyze(ctx: RuleContext) -> list[Provider]:
    name = ctx.label.name
    (kernel_info,) = ctx.providers("kernel", KernelInfo)
    layers = (*tree_inputs(ctx, "base"), kernel_info.modules)
    files, file_inputs = _files(ctx)

    def out(file: str, tree: bool = False) -> Artifact:
        return ctx.output(f"{name}/{file}", tree=tree)

    services = _services(ctx)
    persistent = _persistent(ctx)
    service_layers = tuple(dict.fromkeys(a for s in services for a in s.layers))
    rootfs = out("rootfs.tree", tree=True)
    # The initrd's segments: one per layer, then the image's own entries (see images/initrd.py).
    segment_trees = tuple(out(f"{SEGMENTS}/{i:02d}.tree", tree=True) for i in range(len(layers) + 1))
    ctx.add_action(Action(
        owner=ctx.label, mnemonic="ImageRoot", inputs=(*layers, *file_inputs, *service_layers),
        outputs=(rootfs, *segment_trees),
        params={"layers": [a.path for a in layers], "generated": _generated(ctx, services, persistent),
                "files": files, "services": ctx.strings("services"), "onboot": ctx.strings("onboot"),
                "containers": [_spec(s) for s in services], "persistent": persistent},
        function=assemble,
    ))
    initrd, kernel, cmdline = out("initrd.img"), out("kernel"), out("cmdline")
    add_initrd_actions(ctx, [(tree, out(f"{SEGMENTS}/{i:02d}.cpio.zst")) for i, tree in enumerate(segment_trees)],
                       initrd)
    ctx.add_action(Action(owner=ctx.label, mnemonic="Copy", inputs=(kernel_info.vmlinuz,), outputs=(kernel,),
                          function=copy_file))
    cmdline_text = ctx.string("cmdline") or default_cmdline(ctx.platform.arch)
    ctx.add_action(Action(owner=ctx.label, mnemonic="WriteFile", inputs=(), outputs=(cmdline,),
                          params={"content": cmdline_text + "\n", "executable": False}, function=write))
    sboms = tuple(info.document for dep in ctx.deps.get("base", ()) if (info := dep.find(SbomInfo)))
    sbom = out("sbom.spdx.json")
    ctx.add_action(Action(owner=ctx.label, mnemonic="Sbom", inputs=sboms, outputs=(sbom,),
                          params={"sboms": [s.path for s in sboms], "name": str(ctx.label),
                                  "epoch": ctx.source_date_epoch}, function=combine_sboms))
    rootfs_tar, oci = out("rootfs.tar"), out("image.oci.tar")
    ctx.add_action(archive_action(ctx, "Tar", rootfs, rootfs_tar, "tar", "none"))
    # The OCI image's layers are the initrd's segments: they partition the root, so an edit rewrites
    # one layer (and no whiteout is ever needed).
    oci_config = ImageConfig(ctx.platform.arch, cmd=tuple(init.container_command(ctx.strings("services"))),
                             env=(f"PATH={init.PATH}",))
    for action in oci_actions(ctx.label, segment_trees, False, lambda file: out(f"oci.d/{file}"), oci, oci_config,
                              f"{name}:latest", ctx.source_date_epoch):
        ctx.add_action(action)
    # Output groups are the formats `mk image --format` offers; "kernel+initrd" is the default set.
    groups: dict[str, tuple[Artifact, ...]] = {"tar": (rootfs_tar,), "oci": (oci,)}
    boots = {"kernel+initrd": Boot("direct", "kernel", {"kernel": kernel, "initrd": initrd, "cmdline": cmdline})}
    has_toolchain = ctx.attrs[toolchain.ATTR.name] is not None
    firmware, efi_boot = ctx.providers("firmware", TreeInfo), ctx.providers("efi_boot", TreeInfo)
    parts = ImageParts(name, rootfs, rootfs_tar, kernel, kernel_info.modules, initrd, cmdline, cmdline_text,
                       toolchain.toolchain(ctx) if has_toolchain else None, has_toolchain, bool(ctx.attrs["verity"]),
                       firmware[0].tree if firmware else None, efi_boot[0].tree if efi_boot else None)
    formats = FormatContext(ctx, parts, FORMATS)
    refused = _refused(ctx, bool(efi_boot))
    offered = [f for f in FORMATS.values() if f.name not in refused]
    for fmt in offered:
        if has_toolchain or not fmt.needs_tools:  # without one, only mk's own writers are offered
            built = formats.built(fmt.name)
            groups[fmt.name] = built.files
            if built.boot is not None:
                boots[fmt.name] = built.boot
    wanted = ctx.strings("formats")
    asked = tuple(dict.fromkeys((*ctx.output_groups, *wanted)))  # by `mk image --format`, or the BUILD file
    for why in dict.fromkeys(refused[f] for f in asked if f in refused):
        names = ", ".join(f for f in asked if refused.get(f) == why)
        raise MkError(f"image {ctx.label}: the formats {names} {why}; for {ctx.platform} the image offers "
                      f"{', '.join(['tar', 'oci', *(f.name for f in offered)])}")
    if not has_toolchain and (needing := [f for f in wanted if FORMATS[f].needs_tools]):
        raise MkError(f"image {ctx.label}: the formats {', '.join(needing)} run tools, so the image needs a "
                      "toolchain (a `toolchain` attribute, or the `toolchain` setting in mk.toml)")
    # The manifest describes every file this build places for the image: the formats asked for too.
    described = tuple(dict.fromkeys((kernel, initrd, cmdline, sbom, *(f for g in asked for f in groups.get(g, ())))))
    manifest = out("manifest.json")
    ctx.add_action(Action(owner=ctx.label, mnemonic="Manifest", inputs=described, outputs=(manifest,),
                          function=write_manifest, staged_inputs=False))
    boot = (kernel, initrd, cmdline, sbom, manifest)
    default = tuple(dict.fromkeys((*boot, *(f for name in wanted for f in groups[name]))))
    return [DefaultInfo(files=default, groups={"kernel+initrd": boot, **groups}),
            ImageInfo(kernel, initrd, cmdline, rootfs, ctx.string("ssh_key_user"), boots,
                      tuple(sorted(set(persistent.values()))), ctx.platform.machine)]


def _refused(ctx: RuleContext, has_efi_boot: bool) -> dict[str, str]:
    """The formats the image does not offer for its platform, each with the reason."""
    refused: dict[str, str] = {}
    if ctx.platform.machine != "x86_64":
        refused |= {f: "boot x86-64 PCs only" for f in X86_64_ONLY}
    # The toolchain's systemd-boot-efi is the exec platform's: another platform's image needs its own.
    if not has_efi_boot and ctx.platform != host_platform():
        refused |= {f: f"need systemd-boot for {ctx.platform}: give the image an `efi_boot` tree (Debian's "
                       "systemd-boot-efi, resolved for its platform)" for f in UEFI}
    return refused


def _format_name(name: str) -> str:
    if name not in FORMATS and name not in ("tar", "oci"):
        raise ValueError(f"'{name}' is not an image format; choose from {', '.join(['tar', 'oci', *FORMATS])}")
    return name


def _services(ctx: RuleContext) -> list[ServiceInfo]:
    services = ctx.providers("containers", ServiceInfo)
    names = [s.name for s in services]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise MkError(f"image {ctx.label}: two `containers` are named {', '.join(twice)}: a service's target name "
                      "names its container, so each must differ")
    for service in services:
        if unknown := [n for n in service.after if n not in names or n == service.name]:
            raise MkError(f"image {ctx.label}: service '{service.name}' starts after {', '.join(unknown)}, which "
                          f"is not another of its `containers` ({', '.join(names)})")
    return services


def _spec(service: ServiceInfo) -> dict[str, object]:
    """A service as the ImageRoot action's parameters hold it (its layers by path)."""
    fields = {f.name: getattr(service, f.name) for f in dataclasses.fields(service) if f.name != "layers"}
    plain: dict[str, object] = json.loads(json.dumps(fields))  # parameters hold lists, never tuples
    return {**plain, "layers": [a.path for a in service.layers]}


def _persistent(ctx: RuleContext) -> dict[str, str]:
    value = ctx.attrs["persistent"]
    assert isinstance(value, dict)
    return {str(path): str(disk) for path, disk in sorted(value.items())}


def _disk_name(path: str, name: str) -> str:
    check_path(path, "persistent path")
    if not _DISK.fullmatch(name):
        raise ValueError(f"disk name '{name}' for '{path}' must be 1 to 20 lower-case letters, digits, '_' or '-' "
                         "(it is the disk's serial number)")
    return name


def _generated(ctx: RuleContext, services: list[ServiceInfo], persistent: dict[str, str]) -> list[list[object]]:
    """The boot files mk writes into the image: path, text, mode."""
    prepared = [CGROUPS] if services else []
    prepared += [persistent_mounts(persistent)] if persistent else []
    prepared += [f"/{SUPERVISORS}/{s.name}" for s in services if s.onboot]
    onboot = init.onboot_script(ctx.strings("onboot"), bool(ctx.attrs["network"]), ctx.string("ssh_key_user"),
                                prepared, [VERITY_STATUS] if ctx.attrs["verity"] else [])
    supervised = [f"/{SUPERVISORS}/{s.name}" for s in services if not s.onboot]
    return [
        ["init", init.INIT, 0o755],
        ["etc/inittab", init.inittab(ctx.strings("services"), supervised), 0o644],
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
        "the hostname; with `network`, eth0 is configured by DHCP. Under `mk watch --run` it also keeps the "
        "unpacked root as built and runs the system on an overlay of it, so that a rebuilt image soft-reboots "
        "the VM (the kernel stays; needs the `overlay` and `virtio_blk` modules). `base` must provide /usr/bin/busybox "
        "(busybox-static). The build checks that the program each `onboot` and `services` command starts (its "
        "first word, after variable assignments and `exec`) is in the image and executable: a path is followed "
        "through the image's symlinks, a bare name is looked up on PATH (/usr/sbin:/usr/bin:/sbin:/bin) and "
        "among busybox's applets, which /init links at boot; builtins, shell syntax and expansions are left to "
        "the shell. Outputs in `mk-out/<pkg>/<name>/`: kernel, initrd.img (one zstd cpio per `base` "
        "layer, one for the kernel's modules and one for the image's own files, concatenated: an edit rewrites "
        "only its segment; each path is in one segment only), cmdline, "
        "sbom.spdx.json, manifest.json; `mk image --format tar|oci` adds rootfs.tar or image.oci.tar. The "
        "manifest gives the sha256 and size of every other file there, the formats built included. Boot it "
        "with `mk run`. image.oci.tar holds the root filesystem in the initrd's segments, one gzip'd layer each "
        "(an edit rewrites one layer), named `NAME:latest` in index.json "
        "(`podman load -i image.oci.tar` makes `localhost/NAME:latest`). As a container it runs its first service "
        "(or a busybox shell when it has none) the way busybox init would: through `sh -c`, with PATH "
        "/usr/sbin:/usr/bin:/sbin:/bin, once busybox's applet links are made. That is its `Cmd`, with no "
        "`Entrypoint`, so `podman run IMAGE COMMAND...` runs COMMAND instead. It is not /init, which mounts "
        "/proc, /sys and /dev and loads kernel modules, as a container must not; `onboot` commands and the other "
        "services do not run in a container."
    ),
    attrs=(
        Attr("kernel", attrs.LABEL, "A kernel target.", mandatory=True, providers=(KernelInfo,)),
        Attr("base", attrs.LABEL_LIST, "Trees making up the root filesystem, lowest first; the SBOMs of "
             "`deb_packages` targets among them are merged into the image's.", mandatory=True, providers=(TreeInfo,)),
        Attr("cmdline", attrs.STRING, "Kernel command line; default: `console=C panic=-1`, C being the serial "
             "console of QEMU's machine for the target platform (ttyS0 on amd64, ttyAMA0 on arm64).", default=""),
        Attr("hostname", attrs.STRING, "Host name; default: the target's name.", default=""),
        Attr("onboot", attrs.STRING_LIST, "Shell commands run once at boot, in order, each after the last.",
             default=[]),
        Attr("services", attrs.STRING_LIST, "Long-running commands, restarted when they exit.", default=[]),
        Attr("containers", attrs.LABEL_LIST, "`service` targets: its services and onboot steps run as isolated "
             "containers under crun (which `base` must provide). The onboot steps run in this order, after the "
             "persistent mounts and before the `onboot` commands; the services start once those are done, in "
             "this order (see `service`).", default=[], providers=(ServiceInfo,)),
        Attr("persistent", attrs.keyed_records("disk names", _disk_name), "Absolute path -> disk name: storage "
             "kept across boots on a stateless image. `mk run --disk NAME=SIZE` attaches the disk (created on "
             "first use, kept in `mk-out/PKG/IMAGE.disks/`); the first boot formats a blank disk as ext4 (with "
             "`mkfs.ext4`, which `base` must provide: Debian's e2fsprogs) and every boot mounts it at the path. "
             "Without the disk the console says so and the services that write there are not started. A service "
             "writes there only when its `writable` names the path as `persistent`.", default={}),
        Attr("files", attrs.LABEL_DICT, "Destination path -> a file label.", default={}),
        Attr("network", attrs.BOOL, "Bring eth0 up with DHCP at boot.", default=True),
        Attr("formats", attrs.records("format names", _format_name), "Formats `mk image` writes besides "
             "kernel+initrd (each is also available with `mk image --format F`): "
             + ", ".join(f"`{f.name}` ({f.doc})" for f in FORMATS.values()) + ".", default=[]),
        toolchain.ATTR,
        Attr("verity", attrs.BOOL, "Protect the root of the disk formats (`raw-efi`) with dm-verity: the kernel "
             "checks every block it reads against a root hash held in the UKI's command line, and refuses a "
             "tampered root. The stage-1 initrd opens it with dmsetup, which `base` must then provide; the "
             "image's last boot step prints the device's status on the console (`verity V`: every block read "
             "was intact).",
             default=False),
        Attr("firmware", attrs.LABEL, "A tree holding UEFI firmware, locked like any package set: Debian's "
             "`ovmf` for an amd64 image, its `qemu-efi-aarch64` (AAVMF) for an arm64 one (both are Architecture: "
             "all, so one set may hold both for every platform). The firmware's code and variable store "
             "(OVMF_CODE_4M.fd and OVMF_VARS_4M.fd, or AAVMF_CODE.fd and AAVMF_VARS.fd) go beside the UEFI formats "
             "(`uki`, `raw-efi`, `iso-efi`), which `mk run` boots with them. Without it those formats are built "
             "but not run.", providers=(TreeInfo,)),
        Attr("efi_boot", attrs.LABEL, "A tree holding Debian's `systemd-boot-efi` for the image's platform (a "
             "`deb_packages` set, resolved for it like the kernel's): the UEFI formats take systemd-boot's EFI stub "
             "and boot manager from it (linuxaa64.efi.stub and systemd-bootaa64.efi for arm64). Default: the "
             "toolchain's, which is this host's platform's, so an image for another platform offers the UEFI "
             "formats only with it.", providers=(TreeInfo,)),
        Attr("ssh_key_user", attrs.STRING, "If set, `mk run --ssh-key` installs the key for this user at "
             "boot (passed on the kernel command line, or through QEMU's firmware configuration for the formats "
             "that boot through firmware; never stored in the image).", default=""),
    ),
    analyze=analyze,
    uses_platform=True,
)
