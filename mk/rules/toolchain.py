"""The toolchain attribute of rules that run commands: which tree is the root of their sandbox."""

from __future__ import annotations

from mk.engine import attrs
from mk.engine.actions import Artifact
from mk.engine.errors import MkError
from mk.engine.rule_api import Attr, RuleContext
from mk.engine.workspace import HOST_TOOLCHAIN
from mk.rules.providers import TreeInfo

ATTR = Attr(
    "toolchain", attrs.TOOLCHAIN,
    "The tree (a `deb_packages` set, a layer, ...) that is the root filesystem of the command's sandbox, or "
    '`"host"` for the host\'s /usr (not hermetic). Default: the `toolchain` setting in mk.toml.',
    setting="toolchain", providers=(TreeInfo,), for_exec=True,
)


def toolchain(ctx: RuleContext) -> Artifact | None:
    """The toolchain tree of `ctx`'s target, or None for the host's tools (chosen explicitly)."""
    value = ctx.attrs[ATTR.name]
    if value is None:
        raise MkError(
            f"{ctx.label} runs a command, so it needs a toolchain: set toolchain = \"//package:name\" in mk.toml "
            "(a tree target such as a deb_packages set locked with `mk lock`), or give the target a toolchain "
            "attribute; toolchain = \"host\" runs commands on the host's /usr instead (not hermetic)"
        )
    if value == HOST_TOOLCHAIN:
        return None
    return ctx.providers(ATTR.name, TreeInfo)[0].tree
