"""rootfs: layers merged in order into one tree, with paths removed at the end."""

from __future__ import annotations

from mk.cache.tree import Tree, TreeError, merge, normalise
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.errors import MkError
from mk.engine.rule_api import Attr, AttrType, Rule, RuleContext, TargetInfo

TREE_SUFFIX = ".tree"


def read_tree(io: ActionIO, path: str) -> Tree:
    return Tree.decode(io.inputs[path].read_bytes())


def param_strings(io: ActionIO, key: str) -> list[str]:
    value = io.params[key]
    assert isinstance(value, list)
    return [str(v) for v in value]


def tree_inputs(ctx: RuleContext, attr: str) -> tuple[Artifact, ...]:
    """The tree manifest of each target named by a label attribute (a `deb_packages` target also
    gives an SBOM, which is skipped); a target that gives no tree is an error."""
    trees: list[Artifact] = []
    for dep in ctx.deps.get(attr, ()):
        found = [f for f in dep.files if f.path.endswith(TREE_SUFFIX)]
        if not found:
            raise MkError(f"{ctx.label}: '{dep.text}' in '{attr}' is not a tree; "
                          "name `layer`, `rootfs` or `deb_packages` targets there")
        trees += found
    return tuple(dict.fromkeys(trees))


def merge_layers(io: ActionIO) -> None:
    layers = [read_tree(io, path) for path in param_strings(io, "layers")]
    try:
        tree = merge(layers, param_strings(io, "remove"))
    except TreeError as e:
        raise ValueError(str(e)) from None
    io.outputs[next(iter(io.outputs))].write_bytes(tree.encode())


def analyze(ctx: RuleContext) -> TargetInfo:
    layers = tree_inputs(ctx, "layers")
    for pattern in ctx.strings("remove"):
        try:
            normalise(pattern.lstrip("/"))
        except TreeError as e:
            raise MkError(f"rootfs {ctx.label}: remove pattern {e}") from None
    out = ctx.output(ctx.label.name + TREE_SUFFIX)
    ctx.add_action(Action(
        owner=ctx.label,
        mnemonic="MergeTrees",
        version=1,
        inputs=layers,
        outputs=(out,),
        params={"layers": [a.path for a in layers], "remove": ctx.strings("remove")},
        function=merge_layers,
    ))
    return TargetInfo(files=(out,))


RULE = Rule(
    name="rootfs",
    doc=(
        "Merges `layers` in order into one tree: a later layer's entry replaces an earlier one at the "
        "same path, and a non-folder replacing a folder hides what was under it. Then every path "
        "matching a `remove` pattern is dropped with everything under it. Only metadata is touched."
    ),
    attrs=(
        Attr("layers", AttrType.LABEL_LIST, "`layer` or `rootfs` targets, lowest first.", mandatory=True),
        Attr("remove", AttrType.STRING_LIST, "Glob patterns of paths to drop, e.g. '/usr/share/doc/**'.",
             default=[]),
    ),
    analyze=analyze,
)
