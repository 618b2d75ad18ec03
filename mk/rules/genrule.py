"""genrule: runs a shell command over declared inputs to make declared outputs, as in Bazel.

The command runs with the toolchain's bash in mk's sandbox (see `mk.engine.sandbox`), which holds
only the declared `srcs` and `tools` at their workspace-relative paths, with a fixed environment.
"""

from __future__ import annotations

import re

from mk.engine import attrs
from mk.engine.actions import Action, Artifact
from mk.engine.errors import MkError
from mk.engine.labels import Label, LabelError
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.rules import toolchain

BASH = "/bin/bash"
_VARIABLE = re.compile(r"\$\((locations?) ([^)]+)\)|\$\(([A-Z_@<D]+)\)|\$([@<$])")


def analyze(ctx: RuleContext) -> list[Provider]:
    srcs = ctx.files("srcs")
    tools = ctx.files("tools")
    outs = tuple(ctx.output(o) for o in ctx.strings("outs"))
    if not outs:
        raise MkError(f"genrule {ctx.label} must declare at least one file in 'outs'")
    cmd = _expand(ctx, ctx.string("cmd"), srcs, outs)
    root = toolchain.toolchain(ctx)
    ctx.add_action(
        Action(
            owner=ctx.label,
            mnemonic="Genrule",
            inputs=tuple(dict.fromkeys(srcs + tools + ((root,) if root else ()))),
            outputs=outs,
            params={"env": {"SOURCE_DATE_EPOCH": str(ctx.source_date_epoch)}},
            command=(BASH, "-e", "-o", "pipefail", "-c", cmd),
            toolchain=root,
            local=bool(ctx.attrs["local"]),
        )
    )
    return [DefaultInfo(files=outs)]


def _expand(
    ctx: RuleContext, cmd: str, srcs: tuple[Artifact, ...], outs: tuple[Artifact, ...]
) -> str:
    def paths(files: tuple[Artifact, ...]) -> str:
        return " ".join(f.path for f in files)

    def single(files: tuple[Artifact, ...], var: str, what: str) -> str:
        if len(files) != 1:
            raise MkError(f"genrule {ctx.label}: {var} needs exactly one {what}, got {len(files)}")
        return files[0].path

    def replace(m: re.Match[str]) -> str:
        if m.group(1):
            files = location(ctx, m.group(2).strip())
            return paths(files) if m.group(1) == "locations" else single(files, m.group(0), "file")
        var = m.group(3) or m.group(4)
        if var == "$":
            return "$"
        if var == "SRCS":
            return paths(srcs)
        if var == "OUTS":
            return paths(outs)
        if var == "@":
            return single(outs, "$@", "output")
        if var == "<":
            return single(srcs, "$<", "source")
        if var == "@D":
            return single(outs, "$(@D)", "output").rpartition("/")[0] or "."
        return m.group(0)  # a shell construct such as $(date) is left to bash

    return _VARIABLE.sub(replace, cmd)


def location(ctx: RuleContext, text: str, rule: str = "genrule") -> tuple[Artifact, ...]:
    """The files of the label `text` names, which must be listed in `srcs` or `tools`; errors
    name the target as of `rule`."""
    try:
        wanted = Label.parse(text, ctx.label.package)
    except LabelError as e:
        raise MkError(f"{rule} {ctx.label}: $(location {text}): {e}") from None
    for dep in (*ctx.deps.get("srcs", ()), *ctx.deps.get("tools", ())):
        if dep.label == wanted or (
            dep.label is None and dep.files[0].path == f"{wanted.package}/{wanted.name}".lstrip("/")
        ):
            return dep.files
    raise MkError(f"{rule} {ctx.label}: $(location {text}) names a label that is not in 'srcs' or 'tools'")


RULE = Rule(
    name="genrule",
    doc=(
        "Runs a bash command to produce `outs` from `srcs`, as Bazel's genrule does. The command "
        "runs in mk's sandbox: its root filesystem is the toolchain (read-only), its working "
        "directory `/mk/execroot` holds only the declared inputs at their workspace-relative paths "
        "(read-only), and only the folders of `outs` and a private `/tmp` are writable. It has no "
        "network, runs as uid/gid 1000 on host `mk`, with the environment "
        "`PATH=/usr/local/bin:/usr/bin:/bin`, `LC_ALL=C.UTF-8`, `TZ=UTC`, `SOURCE_DATE_EPOCH`, "
        "`HOME=/tmp`, `TMPDIR=/tmp`, `MK_JOBS=1` and umask 022. In `cmd`, `$(SRCS)` and `$(OUTS)` expand to the "
        "space-separated paths, `$<` to the single source, `$@` to the single output, `$(@D)` to "
        "its directory, `$(location L)` and `$(locations L)` to the path(s) of a label listed in "
        "`srcs` or `tools`, and `$$` to `$`."
    ),
    attrs=(
        Attr("srcs", attrs.LABEL_LIST, "Input files and targets.", default=[]),
        Attr("outs", attrs.OUTPUT_LIST, "Files the command must create, relative to the package.", mandatory=True),
        Attr("cmd", attrs.STRING, "The bash command (run with `-e -o pipefail`).", mandatory=True),
        Attr("tools", attrs.LABEL_LIST, "Programs the command runs; available like `srcs`.", default=[]),
        Attr("local", attrs.BOOL, "Always run the command on this machine, never on a remote executor "
             "(where it runs is not part of its key: the result is shared all the same).", default=False),
        toolchain.ATTR,
    ),
    analyze=analyze,
)
