"""filegroup: names a set of files so other targets can depend on them together."""

from mk.engine.rule_api import Attr, AttrType, Rule, RuleContext, TargetInfo


def analyze(ctx: RuleContext) -> TargetInfo:
    return TargetInfo(files=ctx.files("srcs"))


RULE = Rule(
    name="filegroup",
    doc="A named set of files: source files and the outputs of other targets. Runs nothing.",
    attrs=(Attr("srcs", AttrType.LABEL_LIST, "Files and targets in the group.", default=[]),),
    analyze=analyze,
)
