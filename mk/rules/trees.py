"""Helpers for rules whose attributes name trees: the inputs they give, checked by provider."""

from __future__ import annotations

from mk.engine.actions import Artifact
from mk.engine.rule_api import RuleContext
from mk.rules.providers import TreeInfo


def tree_inputs(ctx: RuleContext, attr: str) -> tuple[Artifact, ...]:
    """The tree of each target named by `attr` (an attribute that requires TreeInfo), in order."""
    return tuple(dict.fromkeys(info.tree for info in ctx.providers(attr, TreeInfo)))
