"""write_file: a file whose content is written in the BUILD file."""

import os

from mk.engine import attrs
from mk.engine.actions import Action, ActionIO
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext


def write(io: ActionIO) -> None:
    path = io.output()
    content = io.string("content")
    path.write_text(content, encoding="utf-8")
    os.chmod(path, 0o755 if io.params["executable"] else 0o644)


def analyze(ctx: RuleContext) -> list[Provider]:
    out = ctx.output(ctx.string("out"))
    lines = ctx.strings("lines")
    content = ctx.string("content") + "".join(line + "\n" for line in lines)
    ctx.add_action(
        Action(
            owner=ctx.label,
            mnemonic="WriteFile",
            inputs=(),
            outputs=(out,),
            params={"content": content, "executable": ctx.attrs["is_executable"]},
            function=write,
        )
    )
    return [DefaultInfo(files=(out,))]


RULE = Rule(
    name="write_file",
    doc="Writes a file whose content is given in the BUILD file.",
    attrs=(
        Attr("out", attrs.OUTPUT, "Name of the file to write, relative to the package.", mandatory=True),
        Attr("content", attrs.STRING, "Text to write, verbatim.", default=""),
        Attr("lines", attrs.STRING_LIST, "Lines to append after `content`, each ending in a newline.", default=[]),
        Attr("is_executable", attrs.BOOL, "Mark the file executable (mode 0755).", default=False),
    ),
    analyze=analyze,
)
