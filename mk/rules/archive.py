"""tar, cpio and oci_image: write a tree out as an archive, byte-for-byte reproducibly."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import BinaryIO

from mk.cache.cas import ContentStore
from mk.cache.tree import Tree, merge
from mk.engine import attrs
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.labels import Label
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.rules.formats.compression import SUFFIXES, compressed
from mk.rules.formats.cpio import write_cpio
from mk.rules.formats.oci import ImageConfig, LayerBlob, write_layer, write_oci_archive
from mk.rules.formats.tar import write_tar
from mk.rules.providers import OciImageInfo, TreeInfo
from mk.rules.trees import tree_inputs

Writer = Callable[[Tree, ContentStore, BinaryIO, int, bool], None]
_OCI_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # the distribution spec's tag grammar
_WRITERS: dict[str, Writer] = {"tar": write_tar, "cpio": write_cpio}
# Writers write a header, a file's bytes and padding per file of the tree: gathered this much at a
# time, they cost a system call per megabyte rather than one or two per file.
_OUT_BUFFER = 1 << 20


def write_archive(io: ActionIO) -> None:
    tree = io.read_tree(io.string("src"))
    writer = _WRITERS[io.string("format")]
    kind = io.string("compression")
    with open(io.output(), "wb", buffering=_OUT_BUFFER) as out, compressed(out, kind) as w:
        writer(tree, io.cas, w, io.integer("mtime"), kind == "none")


def archive_action(ctx: RuleContext, mnemonic: str, src: Artifact, out: Artifact, fmt: str, compression: str) -> Action:
    """Writes the tree `src` as a `fmt` archive; the image rule declares its formats with it too."""
    return Action(
        owner=ctx.label,
        mnemonic=mnemonic,
        inputs=(src,),
        outputs=(out,),
        params={"src": src.path, "format": fmt, "compression": compression, "mtime": ctx.source_date_epoch},
        function=write_archive,
    )


def _archive_rule(fmt: str, doc: str) -> Rule:
    def analyze(ctx: RuleContext) -> list[Provider]:
        (src,) = tree_inputs(ctx, "src")
        compression = ctx.string("compression")
        out = ctx.output(f"{ctx.label.name}.{fmt}{SUFFIXES[compression]}")
        ctx.add_action(archive_action(ctx, fmt.capitalize(), src, out, fmt, compression))
        return [DefaultInfo(files=(out,))]

    return Rule(
        name=fmt,
        doc=doc,
        attrs=(
            Attr("src", attrs.LABEL, "The `layer`, `rootfs` or `deb_packages` tree to write.", mandatory=True,
                 providers=(TreeInfo,)),
            Attr("compression", attrs.one_of(*SUFFIXES), "Fixed levels; zstd output is the same for any "
                 "number of worker threads.", default="none"),
        ),
        analyze=analyze,
    )


TAR_RULE = _archive_rule(
    "tar",
    "Writes a tree as a POSIX (pax) tar: entries sorted by path, numeric owners with empty names, every "
    "mtime SOURCE_DATE_EPOCH. Output: `NAME.tar` plus `.gz`, `.zst` or `.xz`.",
)
CPIO_RULE = _archive_rule(
    "cpio",
    "Writes a tree as a cpio newc archive (the initramfs format): sorted, inode numbers in path order, "
    "every mtime SOURCE_DATE_EPOCH. Output: `NAME.cpio` plus `.gz`, `.zst` or `.xz`.",
)


def write_oci_layer(io: ActionIO) -> None:
    """One layer of an OCI image: its tree (flattened: the merge of the image's trees) as a gzip'd
    tar, and what names it in the manifest."""
    trees = [io.read_tree(path) for path in io.strings("trees")]
    with open(io.output(0), "wb") as out:
        blob = write_layer(trees[0] if len(trees) == 1 else merge(trees), io.cas, out, io.integer("mtime"))
    io.output(1).write_bytes(blob.to_json())


def write_oci(io: ActionIO) -> None:
    layers = [(io.inputs[file], LayerBlob.from_json(io.inputs[named].read_bytes()))
              for file, named in zip(io.strings("layer_files"), io.strings("layer_blobs"), strict=True)]
    config = ImageConfig(
        architecture=io.string("architecture"),
        entrypoint=tuple(io.strings("entrypoint")),
        cmd=tuple(io.strings("cmd")),
        env=tuple(io.strings("env")),
        workdir=io.string("workdir"),
        user=io.string("user"),
    )
    with open(io.output(), "wb") as out:
        write_oci_archive(layers, out, io.integer("mtime"), config, io.string("tag"), io.scratch)


def oci_actions(
    owner: Label, trees: tuple[Artifact, ...], flatten: bool, declare: Callable[[str], Artifact], out: Artifact,
    config: ImageConfig, tag: str, mtime: int,
) -> list[Action]:
    """The actions of an OCI image of `trees` (lowest first): each layer is written by an action of
    its own, so an edit to one tree rewrites one layer (and the archive, which copies the others),
    not all of them. `declare` names a layer's outputs beside the archive."""
    groups = [trees] if flatten else [(tree,) for tree in trees]
    actions, files, blobs = [], list[Artifact](), list[Artifact]()
    for index, group in enumerate(groups):
        file, blob = declare(f"{index:02d}.tar.gz"), declare(f"{index:02d}.json")
        actions.append(Action(owner=owner, mnemonic="OciLayer", inputs=group, outputs=(file, blob),
                              params={"trees": [t.path for t in group], "mtime": mtime}, function=write_oci_layer))
        files.append(file)
        blobs.append(blob)
    params = {"layer_files": [f.path for f in files], "layer_blobs": [b.path for b in blobs],
              "architecture": config.architecture, "entrypoint": list(config.entrypoint), "cmd": list(config.cmd),
              "env": list(config.env), "workdir": config.workdir, "user": config.user, "tag": tag, "mtime": mtime}
    actions.append(Action(owner=owner, mnemonic="OciImage", inputs=(*files, *blobs), outputs=(out,), params=params,
                          function=write_oci))
    return actions


def checked_tag(tag: str) -> str:
    if not _OCI_TAG.fullmatch(tag):
        raise ValueError(f"tag '{tag}' is not an OCI tag (letters, digits, '_', '.' and '-', at most 128, "
                         "not starting with '.' or '-')")
    return tag


def analyze_oci(ctx: RuleContext) -> list[Provider]:
    layers = tree_inputs(ctx, "layers")
    env = ctx.attrs["env"]
    assert isinstance(env, dict)
    tag = checked_tag(ctx.string("tag"))
    name = ctx.label.name
    config = ImageConfig(ctx.string("architecture") or ctx.platform.arch, tuple(ctx.strings("entrypoint")),
                         tuple(ctx.strings("cmd")), tuple(f"{k}={v}" for k, v in sorted(env.items())),
                         ctx.string("workdir"), ctx.string("user"))
    out = ctx.output(f"{name}.oci.tar")
    for action in oci_actions(ctx.label, layers, bool(ctx.attrs["flatten"]),
                              lambda file: ctx.output(f"{name}.oci.d/{file}"), out, config, f"{name}:{tag}",
                              ctx.source_date_epoch):
        ctx.add_action(action)
    image = OciImageInfo(layers, config.entrypoint, config.cmd, config.env, config.workdir, config.user)
    return [DefaultInfo(files=(out,)), image]


OCI_RULE = Rule(
    name="oci_image",
    doc=(
        "An OCI image as an `oci-archive` tarball (`NAME.oci.tar`), which `skopeo copy oci-archive:...` and "
        "`umoci` read. One gzip'd layer per entry of `layers`, or a single merged layer with `flatten`. "
        "`created` is SOURCE_DATE_EPOCH, so the image digest depends only on the inputs. The image is named "
        "`NAME:TAG` in index.json (`org.opencontainers.image.ref.name`): `podman load -i NAME.oci.tar` names it "
        "`localhost/NAME:TAG`, and `skopeo copy oci-archive:NAME.oci.tar:NAME:TAG ...` selects it. A `service` "
        "runs it in an image (its `image` attribute)."
    ),
    attrs=(
        Attr("layers", attrs.LABEL_LIST, "`layer`, `rootfs` or `deb_packages` targets, lowest first.",
             mandatory=True, providers=(TreeInfo,)),
        Attr("flatten", attrs.BOOL, "Merge all layers into one.", default=False),
        Attr("architecture", attrs.STRING, "OCI architecture name; default: the target platform's (amd64, arm64).",
             default=""),
        Attr("entrypoint", attrs.STRING_LIST, "The image's entrypoint.", default=[]),
        Attr("cmd", attrs.STRING_LIST, "The image's default arguments.", default=[]),
        Attr("env", attrs.STRING_DICT, "Environment variables (written sorted).", default={}),
        Attr("workdir", attrs.STRING, "Working directory.", default=""),
        Attr("user", attrs.STRING, "User to run as, e.g. '1000:1000'.", default=""),
        Attr("tag", attrs.STRING, "The image's tag: its reference name in index.json is `NAME:TAG`.",
             default="latest"),
    ),
    analyze=analyze_oci,
    uses_platform=True,
)
