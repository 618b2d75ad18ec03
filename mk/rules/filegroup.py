"""filegroup: names a set of files so other targets can depend on them together."""

from mk.engine import attrs
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext


def analyze(ctx: RuleContext) -> list[Provider]:
    return [DefaultInfo(files=ctx.files("srcs"))]


RULE = Rule(
    name="filegroup",
    doc="A named set of files: source files and the outputs of other targets. Runs nothing.",
    attrs=(Attr("srcs", attrs.LABEL_LIST, "Files and targets in the group.", default=[]),),
    analyze=analyze,
)
