"""package: builds a source tree into an installed tree, as a Nix derivation or a melange recipe.

One command action, in the sandbox: the source tree (seen read-only, as a folder) is copied to the
fixed build path /tmp/build, then the `configure`, `build` and `install` steps run there in
turn, each in a shell of its own, and what `install` puts under `$DESTDIR` becomes the package's
tree. Dependency trees are merged over the toolchain into the build's root filesystem, so their
headers and libraries are where compilers look (/usr/include, /usr/lib). The build is made
reproducible by what it can see (nothing undeclared, a fixed path, user, host, clock and locale):
SOURCE_DATE_EPOCH and the kernel build system's KBUILD_BUILD_* are set from the workspace.
"""

from __future__ import annotations

import re
import shlex
import time

from mk.engine import attrs
from mk.engine.actions import Action, Artifact
from mk.engine.errors import MkError
from mk.engine.platforms import host_platform
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.engine.sandbox import EXECROOT
from mk.rules import toolchain
from mk.rules.genrule import BASH, location
from mk.rules.providers import TreeInfo
from mk.rules.rootfs import merge_layers
from mk.rules.trees import tree_inputs

BUILD_DIR = "/tmp/build"
STEPS = ("configure", "build", "install")
_LOCATION = re.compile(r"\$\(location ([^)]+)\)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Set by the rule: a step that wants another value sets it itself.
_FIXED = ("DESTDIR", "SOURCE_DATE_EPOCH", "KBUILD_BUILD_TIMESTAMP", "KBUILD_BUILD_USER", "KBUILD_BUILD_HOST")


def script(src: Artifact, destdir: str, steps: dict[str, str]) -> str:
    """The bash script of the build: copy the source, then each step in a subshell from the build
    folder; a failing step is named on stderr, last."""
    lines = [
        "exec 1>&2",  # one stream, in the order things happened: a failure shows its last lines
        f"cp -R {shlex.quote(f'{EXECROOT}/{src.path}')}/. {BUILD_DIR}/",
        f"chmod -R u+w {BUILD_DIR}",  # the source is read-only, and its copy must not be
        f"mkdir {shlex.quote(destdir)}",
    ]
    for step in STEPS:
        text = steps[step].strip()
        if text:
            said = shlex.quote(f"mk: the {step} step failed: {text.splitlines()[0]}")
            lines.append(f"echo 'mk: {step}'")
            lines.append(f"( cd {BUILD_DIR} && {{\n{text}\n}} ) || {{ code=$?; echo {said} \"(exit code $code)\"; "
                         "exit $code; }")
    return f"mkdir {BUILD_DIR}\n" + "\n".join(lines) + "\n"


def analyze(ctx: RuleContext) -> list[Provider]:
    if ctx.platform != host_platform():
        # Its commands compile with the toolchain's native compiler: what they make is for the host.
        raise MkError(f"package {ctx.label}: builds with its toolchain's native compiler, for {host_platform()}; "
                      f"{ctx.platform} would need a cross compiler, which package does not set up (take the "
                      "program from a Debian package for that architecture instead)")
    (src,) = tree_inputs(ctx, "src")
    root = toolchain.toolchain(ctx)
    deps = tree_inputs(ctx, "deps")
    if deps:
        if root is None:
            raise MkError(f"package {ctx.label}: 'deps' are merged into the toolchain's tree, and toolchain = "
                          "\"host\" has none; name a toolchain (a deb_packages set)")
        merged = ctx.output(f"{ctx.label.name}.buildroot.tree", tree=True)
        ctx.add_action(Action(
            owner=ctx.label, mnemonic="BuildRoot", inputs=(root, *deps), outputs=(merged,),
            params={"layers": [root.path, *(d.path for d in deps)], "remove": []}, function=merge_layers,
        ))
        root = merged
    out = ctx.output(f"{ctx.label.name}.tree", tree=True)
    destdir = f"{EXECROOT}/{out.path}"
    steps = {step: _expand(ctx, ctx.string(step)) for step in STEPS}
    ctx.add_action(Action(
        owner=ctx.label,
        mnemonic="Package",
        inputs=tuple(dict.fromkeys((src, *ctx.files("srcs"), *((root,) if root else ())))),
        outputs=(out,),
        params={"env": _environment(ctx, destdir)},
        command=(BASH, "-e", "-o", "pipefail", "-c", script(src, destdir, steps)),
        toolchain=root,
    ))
    return [DefaultInfo(files=(out,)), TreeInfo(out)]


def _environment(ctx: RuleContext, destdir: str) -> dict[str, str]:
    declared = ctx.attrs["env"]
    assert isinstance(declared, dict)
    for name in declared:
        if not _NAME.fullmatch(name) or name in _FIXED:
            why = "is set by the rule" if name in _FIXED else "is not a variable name"
            raise MkError(f"package {ctx.label}: env '{name}' {why}")
    epoch = ctx.source_date_epoch
    return {
        **{str(k): str(v) for k, v in sorted(declared.items())},
        "DESTDIR": destdir,
        "SOURCE_DATE_EPOCH": str(epoch),
        "KBUILD_BUILD_TIMESTAMP": time.strftime("%a %b %e %H:%M:%S UTC %Y", time.gmtime(epoch)),
        "KBUILD_BUILD_USER": "mk",
        "KBUILD_BUILD_HOST": "mk",
    }


def _expand(ctx: RuleContext, text: str) -> str:
    """`$(location L)`: the absolute path of a file listed in `srcs`, as the steps see it."""
    def replace(m: re.Match[str]) -> str:
        files = location(ctx, m.group(1).strip(), "package")
        if len(files) != 1:
            raise MkError(f"package {ctx.label}: {m.group(0)} needs exactly one file, got {len(files)}")
        return shlex.quote(f"{EXECROOT}/{files[0].path}")

    return _LOCATION.sub(replace, text)


RULE = Rule(
    name="package",
    doc=(
        "Builds a source tree into an installed tree that any image or layer can use, in the spirit of a Nix "
        "derivation or a melange recipe. In mk's sandbox (see `genrule`), on `toolchain` with the `deps` trees "
        f"merged over it, the source is copied to the fixed build folder `{BUILD_DIR}`, then `configure`, "
        "`build` and `install` run there, each a bash script (`-e -o pipefail`) in a subshell of its own "
        "starting in that folder. `install` puts the package's files under `$DESTDIR` (make install honours "
        "it), which becomes `NAME.tree`, owned by root, without timestamps. The environment adds "
        "`SOURCE_DATE_EPOCH`, `KBUILD_BUILD_TIMESTAMP`, `KBUILD_BUILD_USER` and `KBUILD_BUILD_HOST` (`mk`) and "
        "`env`. The steps are plain bash, except that `$(location L)` is the absolute path of a file listed in "
        "`srcs` (a config file, a patch). What the build printed is kept and shown by `mk log TARGET`; a "
        "failing step is named with the last lines it printed."
    ),
    attrs=(
        Attr("src", attrs.LABEL, "The source tree: a `deb_source`, `http_archive` or any tree target.",
             mandatory=True, providers=(TreeInfo,)),
        Attr("srcs", attrs.LABEL_LIST, "Files the steps read through `$(location L)`.", default=[]),
        Attr("deps", attrs.LABEL_LIST, "Trees merged over the toolchain for the build (headers and libraries: "
             "`deb_packages` sets, other packages).", default=[], providers=(TreeInfo,)),
        Attr("configure", attrs.STRING, "The configure step, e.g. `./configure --prefix=/usr`.", default=""),
        Attr("build", attrs.STRING, "The build step, e.g. `make -j2`.", default=""),
        Attr("install", attrs.STRING, "The install step, which fills `$DESTDIR`, e.g. `make install`.",
             mandatory=True),
        Attr("env", attrs.STRING_DICT, "More environment variables for the steps.", default={}),
        toolchain.ATTR,
    ),
    analyze=analyze,
    uses_platform=True,
)
