"""rootfs: layers merged in order into one tree, with paths removed at the end."""

from __future__ import annotations

from mk.cache.tree import TreeError, merge, normalise
from mk.engine import attrs
from mk.engine.actions import Action, ActionIO
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.rules.providers import TreeInfo
from mk.rules.trees import tree_inputs


def merge_layers(io: ActionIO) -> None:
    layers = [io.read_tree(path) for path in io.strings("layers")]
    try:
        tree = merge(layers, io.strings("remove"))
    except TreeError as e:
        raise ValueError(str(e)) from None
    io.write_tree(tree)


def _remove_pattern(pattern: str) -> str:
    try:
        normalise(pattern.lstrip("/"))
    except TreeError as e:
        raise ValueError(f"remove pattern {e}") from None
    return pattern


def analyze(ctx: RuleContext) -> list[Provider]:
    layers = tree_inputs(ctx, "layers")
    out = ctx.output(ctx.label.name + ".tree", tree=True)
    ctx.add_action(Action(
        owner=ctx.label,
        mnemonic="MergeTrees",
        inputs=layers,
        outputs=(out,),
        params={"layers": [a.path for a in layers], "remove": ctx.strings("remove")},
        function=merge_layers,
    ))
    return [DefaultInfo(files=(out,)), TreeInfo(out)]


RULE = Rule(
    name="rootfs",
    doc=(
        "Merges `layers` in order into one tree: a later layer's entry replaces an earlier one at the "
        "same path, and a non-folder replacing a folder hides what was under it. Then every path "
        "matching a `remove` pattern is dropped with everything under it. Only metadata is touched."
    ),
    attrs=(
        Attr("layers", attrs.LABEL_LIST, "`layer`, `rootfs` or `deb_packages` targets, lowest first.",
             mandatory=True, providers=(TreeInfo,)),
        Attr("remove", attrs.records("glob patterns", _remove_pattern),
             "Glob patterns of paths to drop, e.g. '/usr/share/doc/**'.", default=[]),
    ),
    analyze=analyze,
)
