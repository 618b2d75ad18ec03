"""write_file: a file whose content is written in the BUILD file."""

import os

from mk.engine.actions import Action, ActionIO
from mk.engine.rule_api import Attr, AttrType, Rule, RuleContext, TargetInfo


def write(io: ActionIO) -> None:
    (path,) = io.outputs.values()
    content = str(io.params["content"])
    path.write_text(content, encoding="utf-8")
    os.chmod(path, 0o755 if io.params["executable"] else 0o644)


def analyze(ctx: RuleContext) -> TargetInfo:
    out = ctx.output(ctx.string("out"))
    lines = ctx.strings("lines")
    content = ctx.string("content") + "".join(line + "\n" for line in lines)
    ctx.add_action(
        Action(
            owner=ctx.label,
            mnemonic="WriteFile",
            version=1,
            inputs=(),
            outputs=(out,),
            params={"content": content, "executable": ctx.attrs["is_executable"]},
            function=write,
        )
    )
    return TargetInfo(files=(out,))


RULE = Rule(
    name="write_file",
    doc="Writes a file whose content is given in the BUILD file.",
    attrs=(
        Attr("out", AttrType.OUTPUT, "Name of the file to write, relative to the package.", mandatory=True),
        Attr("content", AttrType.STRING, "Text to write, verbatim.", default=""),
        Attr("lines", AttrType.STRING_LIST, "Lines to append after `content`, each ending in a newline.", default=[]),
        Attr("is_executable", AttrType.BOOL, "Mark the file executable (mode 0755).", default=False),
    ),
    analyze=analyze,
)
