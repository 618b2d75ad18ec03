"""oci_index: one image built for several platforms, as a multi-platform OCI image."""

from __future__ import annotations

from mk.engine import attrs
from mk.engine.actions import Action, ActionIO
from mk.engine.platforms import Platform
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.rules.archive import checked_tag
from mk.rules.formats.oci_index import write_index_archive
from mk.rules.providers import OciImageInfo


def write_index(io: ActionIO) -> None:
    images = []
    for path, platform in zip(io.strings("images"), io.strings("platforms"), strict=True):
        os_name, _, arch = platform.partition("/")
        images.append((io.inputs[path], os_name, arch))
    with open(io.output(), "wb") as out:
        write_index_archive(images, out, io.integer("epoch"), io.string("ref_name"), io.scratch)


def analyze(ctx: RuleContext) -> list[Provider]:
    platforms = [str(Platform.parse(p)) for p in ctx.strings("platforms")]
    images = ctx.files("image")
    tag = checked_tag(ctx.string("tag"))
    if len(set(platforms)) != len(platforms) or len(images) != len(platforms):
        raise ValueError(f"platforms {platforms}: name each platform once")
    out = ctx.output(f"{ctx.label.name}.oci.tar")
    ctx.add_action(Action(owner=ctx.label, mnemonic="OciIndex", inputs=images, outputs=(out,),
                          params={"images": [i.path for i in images], "platforms": platforms,
                                  "ref_name": f"{ctx.label.name}:{tag}", "epoch": ctx.source_date_epoch},
                          function=write_index))
    return [DefaultInfo(files=(out,))]


RULE = Rule(
    name="oci_index",
    doc=(
        "A multi-platform OCI image as an `oci-archive` tarball (`NAME.oci.tar`): the `oci_image` target `image`, "
        "built for each of `platforms` whatever the build's own target platform, under one image index whose "
        "entries name their platform. The top index.json names that index `NAME:TAG`; `skopeo inspect --raw "
        "oci-archive:NAME.oci.tar` prints it, and `skopeo copy --override-arch arm64 ...` picks one platform. "
        "Blobs the platforms share are stored once."
    ),
    attrs=(
        Attr("image", attrs.LABEL, "An `oci_image` target, analysed for each platform.", mandatory=True,
             providers=(OciImageInfo,), per_platform="platforms"),
        Attr("platforms", attrs.STRING_LIST, "The platforms, in the order the index lists them.",
             default=["linux/amd64", "linux/arm64"]),
        Attr("tag", attrs.STRING, "The image's tag: its reference name in index.json is `NAME:TAG`.",
             default="latest"),
    ),
    analyze=analyze,
)
