"""Trees by provider: the inputs of rules whose attributes name trees, and the tree any target
stands for (what `mk ls` and `mk diff` show)."""

from __future__ import annotations

from mk.engine.actions import Artifact
from mk.engine.rule_api import Providers, RuleContext
from mk.rules.providers import ImageInfo, KernelInfo, TreeInfo


def tree_inputs(ctx: RuleContext, attr: str) -> tuple[Artifact, ...]:
    """The tree of each target named by `attr` (an attribute that requires TreeInfo), in order."""
    return tuple(dict.fromkeys(info.tree for info in ctx.providers(attr, TreeInfo)))


def provided_tree(providers: Providers) -> Artifact | None:
    """The tree a target stands for: a layer's, root filesystem's or package set's own, an image's
    root filesystem, a kernel's modules; None for a target without one."""
    if (tree := providers.get(TreeInfo)) is not None:
        return tree.tree
    if (image := providers.get(ImageInfo)) is not None:
        return image.root
    if (kernel := providers.get(KernelInfo)) is not None:
        return kernel.modules
    return None
