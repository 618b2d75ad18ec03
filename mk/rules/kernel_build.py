"""kernel_build: Linux compiled from source, in the sandbox, on a locked kernel toolchain.

It gives the same `KernelInfo` as the `kernel` rule, so any image takes either. Its actions are
cached one by one, so that an edit reruns as little as it can:

- KernelSource: the source tarball (Debian's linux-source-6.1 ships
  /usr/src/linux-source-6.1.tar.xz) taken out of the `source` tree as a file;
- KernelFragments: the fragments parsed and merged into the lines that count, so editing a
  comment stops here;
- KernelConfig (sandbox): `make BASE`, the merged fragment appended, `make olddefconfig`;
- KernelConfigCheck: warns of each fragment option olddefconfig dropped, refuses options that
  would make the build irreproducible, and passes the resolved .config on unchanged. A fragment
  edit that leaves it the same stops here: nothing is compiled again (early cutoff);
- KernelCompile (sandbox): compiles with the resolved .config on all of the build's -j, and
  packs the kernel and its modules as a tar laid out as a linux-image package is;
- KernelTree: that tar as a tree; KernelModules: the kernel and the modules an image loads,
  picked as the `kernel` rule picks them.

Both sandboxed actions unpack the tarball into a fixed path (/tmp/linux) rather than reading a
source tree stored once in the content store: the tree is 1.3 GB in some 80,000 files, which a
store would compress and hash and every action write out again file by file, while unpacking the
tarball is one sequential read (see bench/README.md for the figures).
"""

from __future__ import annotations

import shlex
import time

from mk.cache.tree import Kind
from mk.engine import attrs
from mk.engine.actions import ALL_JOBS, Action, ActionIO, Artifact
from mk.engine.errors import Location, MkError
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.engine.sandbox import EXECROOT
from mk.rules import toolchain
from mk.rules.kernel import MODULES_ATTR, kernel_info
from mk.rules.kernel_config import Request, dropped, merged, parse_config, parse_fragment
from mk.rules.providers import TreeInfo
from mk.rules.tarball import UnsafeArchiveError, import_tar
from mk.rules.trees import tree_inputs

ARCH = "x86_64"
BUILD_DIR = "/tmp/linux"  # the fixed build path: the same in every sandbox, whatever the workspace
BASES = ("tinyconfig", "allnoconfig", "alldefconfig", "defconfig")
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # depmod, which modules_install runs, is in sbin
_SOURCE = "usr/src/linux-source-"
# Options whose build makes something new each time: the kernel would differ at every build.
IRREPRODUCIBLE = {
    "CONFIG_MODULE_SIG": "modules would be signed with a key made at build time",
    "CONFIG_RANDSTRUCT_FULL": "structure layouts would follow a seed made at build time",
    "CONFIG_RANDSTRUCT_PERFORMANCE": "structure layouts would follow a seed made at build time",
}


# ---- actions ---------------------------------------------------------------------------------


def take_source(io: ActionIO) -> None:
    tree = io.read_tree(io.string("source"))
    found = [e for e in tree.entries if e.path.startswith(_SOURCE) and e.path.endswith(".tar.xz")
             and "/" not in e.path.removeprefix(_SOURCE) and e.kind is Kind.FILE]
    if len(found) != 1:
        raise ValueError(f"the source tree should hold one /{_SOURCE}*.tar.xz (Debian's linux-source-6.1 package), "
                         f"and holds {len(found)}")
    with open(io.output(), "wb") as out:
        io.cas.copy_to(found[0].digest, out, found[0].size)


def _requests(io: ActionIO) -> list[Request]:
    """What the fragments ask for, in order; a line that is no option fails the action, naming it."""
    requests = []
    for path in io.strings("fragments"):
        requests += parse_fragment(io.inputs[path].read_text(encoding="utf-8", errors="replace"), path)
    return requests


def merge_fragments(io: ActionIO) -> None:
    io.output().write_text(merged(_requests(io)), encoding="utf-8")


def check_config(io: ActionIO) -> None:
    """Warns of each fragment option the resolved config lost, naming its file and line; refuses a
    config that cannot build the same kernel twice; passes the resolved config on unchanged."""
    config = io.inputs[io.string("config")].read_bytes()
    resolved = parse_config(config.decode("utf-8", "replace"))
    for request, why in dropped(_requests(io), resolved):
        io.warn(f"{request.shown()} was dropped by `make olddefconfig`: {why}",
                Location(request.file, request.line, 1))
    refused = [f"{option}=y: {why}" for option, why in IRREPRODUCIBLE.items() if resolved.get(option) == "y"]
    if refused:
        raise ValueError("the resolved config cannot build the same kernel twice: " + "; ".join(refused)
                         + " (turn them off in a fragment: '# CONFIG_X is not set')")
    io.output().write_bytes(config)


def read_build(io: ActionIO) -> None:
    with open(io.inputs[io.string("tar")], "rb") as f:
        try:
            tree = import_tar(f, io.cas, "the kernel build's tar")
        except UnsafeArchiveError as e:
            raise ValueError(str(e)) from None
    io.write_tree(tree)


# ---- the sandboxed commands ------------------------------------------------------------------


def _unpack(tarball: Artifact) -> str:
    return (f"mkdir {BUILD_DIR}\n"
            f"tar -xf {shlex.quote(tarball.path)} --strip-components=1 -C {BUILD_DIR}\n"
            f"cd {BUILD_DIR}\n")


def config_script(tarball: Artifact, base: str, fragment: Artifact, out: Artifact) -> str:
    make = f"make -s ARCH={ARCH}"
    return (_unpack(tarball)
            + f"{make} {shlex.quote(base)}\n"
            + f"cat {EXECROOT}/{shlex.quote(fragment.path)} >> .config\n"
            + f"{make} olddefconfig\n"
            + f"cp .config {EXECROOT}/{shlex.quote(out.path)}\n")


def compile_script(tarball: Artifact, config: Artifact, out: Artifact) -> str:
    make = f"make ARCH={ARCH}"
    return (_unpack(tarball)
            + f"cp {EXECROOT}/{shlex.quote(config.path)} .config\n"
            + f'{make} -j"$MK_JOBS" bzImage $(grep -qx CONFIG_MODULES=y .config && echo modules)\n'
            + f"release=$({make} -s kernelrelease)\n"
            + "mkdir -p /tmp/install/boot\n"
            + 'cp arch/x86/boot/bzImage "/tmp/install/boot/vmlinuz-$release"\n'
            + "if grep -qx CONFIG_MODULES=y .config; then\n"
            + f"    {make} -s INSTALL_MOD_PATH=/tmp/install/usr INSTALL_MOD_STRIP=1 modules_install\n"
            + '    rm -f "/tmp/install/usr/lib/modules/$release/build" "/tmp/install/usr/lib/modules/$release/source"\n'
            + "fi\n"
            + "tar --sort=name --mtime=@\"$SOURCE_DATE_EPOCH\" --owner=0 --group=0 --numeric-owner --format=gnu "
            + f"-cf {EXECROOT}/{shlex.quote(out.path)} -C /tmp/install .\n")


def build_timestamp(epoch: int) -> str:
    """SOURCE_DATE_EPOCH as `date` prints it in UTC ("Thu Jan  1 00:00:00 UTC 1970"): the kernel
    shows it in `uname -v` and gives it to `date -d`."""
    t = time.gmtime(epoch)
    return time.strftime("%a %b ", t) + f"{t.tm_mday:2d}" + time.strftime(" %H:%M:%S UTC %Y", t)


# ---- analysis --------------------------------------------------------------------------------


def analyze(ctx: RuleContext) -> list[Provider]:
    name = ctx.label.name
    if ctx.platform.machine != ARCH:
        raise MkError(f"kernel_build {ctx.label}: compiles Linux for {ARCH} only, with the toolchain's native "
                      f"compiler; {ctx.platform} would need a cross compiler, which kernel_build does not set up "
                      "(use a kernel from a Debian package: linux-image-cloud-$(ARCH))")
    (source,) = tree_inputs(ctx, "source")
    fragments = ctx.files("fragments")
    root = toolchain.toolchain(ctx)
    tools = (root,) if root else ()

    def out(file: str, tree: bool = False) -> Artifact:
        return ctx.output(f"{name}.build/{file}", tree=tree)

    def command(mnemonic: str, inputs: tuple[Artifact, ...], output: Artifact, script: str,
                env: dict[str, str], jobs: int = 1) -> None:
        ctx.add_action(Action(
            owner=ctx.label, mnemonic=mnemonic, inputs=(*inputs, *tools), outputs=(output,),
            params={"env": {"SOURCE_DATE_EPOCH": str(ctx.source_date_epoch), "PATH": TOOL_PATH, **env}},
            command=("/bin/bash", "-e", "-o", "pipefail", "-c", script), toolchain=root, jobs=jobs,
        ))

    tarball, fragment = out("linux.tar.xz"), out("fragments.config")
    ctx.add_action(Action(owner=ctx.label, mnemonic="KernelSource", inputs=(source,), outputs=(tarball,),
                          params={"source": source.path}, function=take_source))
    ctx.add_action(Action(owner=ctx.label, mnemonic="KernelFragments", inputs=fragments, outputs=(fragment,),
                          params={"fragments": [f.path for f in fragments]}, function=merge_fragments))
    olddefconfig, config = out("olddefconfig.config"), ctx.output(f"{name}.config")
    command("KernelConfig", (tarball, fragment), olddefconfig,
            config_script(tarball, ctx.string("base"), fragment, olddefconfig), {})
    ctx.add_action(Action(owner=ctx.label, mnemonic="KernelConfigCheck", inputs=(olddefconfig, *fragments),
                          outputs=(config,), params={"config": olddefconfig.path,
                                                     "fragments": [f.path for f in fragments]},
                          function=check_config))
    built = out("kernel.tar")
    command("KernelCompile", (tarball, config), built, compile_script(tarball, config, built), {
        "KBUILD_BUILD_TIMESTAMP": build_timestamp(ctx.source_date_epoch),
        "KBUILD_BUILD_USER": ctx.string("build_user"),
        "KBUILD_BUILD_HOST": ctx.string("build_host"),
        "KBUILD_BUILD_VERSION": ctx.string("build_version"),
    }, jobs=ALL_JOBS)
    tree = out("kernel.tree", tree=True)
    ctx.add_action(Action(owner=ctx.label, mnemonic="KernelTree", inputs=(built,), outputs=(tree,),
                          params={"tar": built.path}, function=read_build))
    info = kernel_info(ctx, tree)
    return [DefaultInfo(files=(info.vmlinuz, info.modules, config)), info]


RULE = Rule(
    name="kernel_build",
    doc=(
        "Linux compiled from source for x86_64 in the sandbox, on a locked `toolchain` (gcc, make, bc, bison, "
        "flex, libelf-dev, ... from a `deb_packages` set), never the host's compilers. The configuration is `base` "
        "(a config target of the kernel's own, such as `tinyconfig`) with the `fragments` applied in order and "
        "resolved by `make olddefconfig`; a fragment option that the kernel drops gets a warning naming it, "
        "with its file and line. The resolved config is an output of its own (`NAME.config`), and the compile "
        "is keyed on it: a fragment edit that leaves it unchanged compiles nothing. The compile uses all of "
        "the build's `-j`, in a fixed build path, with `KBUILD_BUILD_TIMESTAMP` from SOURCE_DATE_EPOCH and "
        "the user, host and version below, so the same inputs give the same bytes; a config that signs "
        "modules with a key made at build time, or randomises structure layouts, is refused. It provides "
        "what the `kernel` rule does (`NAME.vmlinuz`, and `NAME.modules.tree` with the `modules` to load at "
        "boot, their dependencies, `modules.dep` and their load order), so any image can take either."
    ),
    attrs=(
        Attr("source", attrs.LABEL, "A tree holding one /usr/src/linux-source-*.tar.xz: a `deb_packages` set of "
             "Debian's `linux-source-6.1`.", mandatory=True, providers=(TreeInfo,)),
        Attr("base", attrs.one_of(*BASES), "The config the fragments apply over, made by the kernel's own "
             "make target of that name.", default="tinyconfig"),
        Attr("fragments", attrs.LABEL_LIST, "Config fragments applied over `base` in order, a later line "
             "for an option replacing an earlier one: lines `CONFIG_X=value` and `# CONFIG_X is not set`, "
             "and comments.", default=[]),
        MODULES_ATTR,
        Attr("build_user", attrs.STRING, "KBUILD_BUILD_USER: the user /proc/version names (`mk@mk`).",
             default="mk"),
        Attr("build_host", attrs.STRING, "KBUILD_BUILD_HOST: the host /proc/version names.", default="mk"),
        Attr("build_version", attrs.STRING, "KBUILD_BUILD_VERSION: the build number in `uname -v` (#1).",
             default="1"),
        toolchain.ATTR,
    ),
    analyze=analyze,
    uses_platform=True,
)
