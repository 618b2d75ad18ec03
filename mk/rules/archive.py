"""tar, cpio and oci_image: write a tree out as an archive, byte-for-byte reproducibly."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from mk.cache.cas import ContentStore
from mk.cache.tree import Tree, merge
from mk.engine.actions import Action, ActionIO
from mk.engine.errors import MkError
from mk.engine.rule_api import Attr, AttrType, Rule, RuleContext, TargetInfo
from mk.rules.formats.compression import SUFFIXES, compressed
from mk.rules.formats.cpio import write_cpio
from mk.rules.formats.oci import ImageConfig, write_oci_archive
from mk.rules.formats.tar import write_tar
from mk.rules.rootfs import param_strings, read_tree, tree_inputs

Writer = Callable[[Tree, ContentStore, BinaryIO, int], None]
_WRITERS: dict[str, Writer] = {"tar": write_tar, "cpio": write_cpio}


def write_archive(io: ActionIO) -> None:
    tree = read_tree(io, str(io.params["src"]))
    writer = _WRITERS[str(io.params["format"])]
    with open(io.outputs[next(iter(io.outputs))], "wb") as out, compressed(out, str(io.params["compression"])) as w:
        writer(tree, io.cas, w, int(str(io.params["mtime"])))


def _archive_rule(fmt: str, doc: str) -> Rule:
    def analyze(ctx: RuleContext) -> TargetInfo:
        (src,) = tree_inputs(ctx, "src") or (None,)
        if src is None:
            raise MkError(f"{fmt} {ctx.label}: 'src' must name a layer or rootfs")
        compression = ctx.string("compression")
        if compression not in SUFFIXES:
            raise MkError(f"{fmt} {ctx.label}: compression '{compression}' is not one of {', '.join(SUFFIXES)}")
        out = ctx.output(f"{ctx.label.name}.{fmt}{SUFFIXES[compression]}")
        ctx.add_action(Action(
            owner=ctx.label,
            mnemonic=fmt.capitalize(),
            version=2,
            inputs=(src,),
            outputs=(out,),
            params={"src": src.path, "format": fmt, "compression": compression, "mtime": ctx.source_date_epoch},
            function=write_archive,
        ))
        return TargetInfo(files=(out,))

    return Rule(
        name=fmt,
        doc=doc,
        attrs=(
            Attr("src", AttrType.LABEL, "The `layer` or `rootfs` to write.", mandatory=True),
            Attr("compression", AttrType.STRING, "none, gzip, zstd or xz (fixed levels, single-threaded).",
                 default="none"),
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


def write_oci(io: ActionIO) -> None:
    p = io.params
    layers = [read_tree(io, path) for path in param_strings(io, "layers")]
    if p["flatten"]:
        layers = [merge(layers)]
    config = ImageConfig(
        architecture=str(p["architecture"]),
        entrypoint=tuple(param_strings(io, "entrypoint")),
        cmd=tuple(param_strings(io, "cmd")),
        env=tuple(param_strings(io, "env")),
        workdir=str(p["workdir"]),
        user=str(p["user"]),
    )
    with open(io.outputs[next(iter(io.outputs))], "wb") as out:
        write_oci_archive(layers, io.cas, out, int(str(p["mtime"])), config, str(p["tag"]), io.scratch)


def analyze_oci(ctx: RuleContext) -> TargetInfo:
    layers = tree_inputs(ctx, "layers")
    env = ctx.attrs["env"]
    assert isinstance(env, dict)
    out = ctx.output(f"{ctx.label.name}.oci.tar")
    ctx.add_action(Action(
        owner=ctx.label,
        mnemonic="OciImage",
        version=2,
        inputs=layers,
        outputs=(out,),
        params={
            "layers": [a.path for a in layers],
            "flatten": ctx.attrs["flatten"],
            "architecture": ctx.string("architecture"),
            "entrypoint": ctx.strings("entrypoint"),
            "cmd": ctx.strings("cmd"),
            "env": [f"{k}={v}" for k, v in sorted(env.items())],
            "workdir": ctx.string("workdir"),
            "user": ctx.string("user"),
            "tag": ctx.string("tag") or "latest",
            "mtime": ctx.source_date_epoch,
        },
        function=write_oci,
    ))
    return TargetInfo(files=(out,))


OCI_RULE = Rule(
    name="oci_image",
    doc=(
        "An OCI image as an `oci-archive` tarball (`NAME.oci.tar`), which `skopeo copy oci-archive:...` and "
        "`umoci` read. One gzip'd layer per entry of `layers`, or a single merged layer with `flatten`. "
        "`created` is SOURCE_DATE_EPOCH, so the image digest depends only on the inputs."
    ),
    attrs=(
        Attr("layers", AttrType.LABEL_LIST, "`layer` or `rootfs` targets, lowest first.", mandatory=True),
        Attr("flatten", AttrType.BOOL, "Merge all layers into one.", default=False),
        Attr("architecture", AttrType.STRING, "OCI architecture name.", default="amd64"),
        Attr("entrypoint", AttrType.STRING_LIST, "The image's entrypoint.", default=[]),
        Attr("cmd", AttrType.STRING_LIST, "The image's default arguments.", default=[]),
        Attr("env", AttrType.STRING_DICT, "Environment variables (written sorted).", default={}),
        Attr("workdir", AttrType.STRING, "Working directory.", default=""),
        Attr("user", AttrType.STRING, "User to run as, e.g. '1000:1000'.", default=""),
        Attr("tag", AttrType.STRING, "The reference name in index.json; default 'latest'.", default=""),
    ),
    analyze=analyze_oci,
)
