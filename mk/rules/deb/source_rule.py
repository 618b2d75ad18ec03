"""deb_source: a Debian source package, fetched by sha256 and unpacked with its patches applied.

`mk lock` resolves the package against the signed Sources indices into a lockfile (see
`sources`); each of its files (.dsc, .orig.tar.*, .debian.tar.*) is then a fixed-output fetch,
like a .deb's. `dpkg-source -x` unpacks them in the sandbox, on a toolchain that holds dpkg-dev:
it checks each file against the checksums the .dsc lists, refuses paths that leave the tree and
applies debian/patches, as Debian's own builds do. The quilt state it leaves (.pc) is dropped.
"""

from __future__ import annotations

from mk.engine import attrs
from mk.engine.actions import Action, Artifact
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.engine.sandbox import EXECROOT
from mk.rules import toolchain
from mk.rules.deb.fetch import fetch
from mk.rules.deb.lockfile import Manifest
from mk.rules.deb.rule import DEFAULT_KEYRING, checked_lockfile
from mk.rules.deb.sources import ARCHITECTURE, SourceLockfile
from mk.rules.genrule import BASH
from mk.rules.providers import TreeInfo


def source_manifest(ctx_attrs: dict[str, object]) -> Manifest:
    def strings(name: str) -> tuple[str, ...]:
        value = ctx_attrs[name]
        assert isinstance(value, list)
        return tuple(str(v) for v in value)

    return Manifest(strings("suites"), strings("components"), ARCHITECTURE, (str(ctx_attrs["package"]),), ())


def analyze(ctx: RuleContext) -> list[Provider]:
    lock = checked_lockfile(ctx, "deb_source", SourceLockfile.loads, source_manifest(dict(ctx.attrs)),
                            "the package, suites or components")
    source = lock.source
    name = ctx.label.name
    fetched: list[Artifact] = []
    for file in source.files:
        out = ctx.output(f"{name}.files/{file.name}")
        ctx.add_action(Action(
            owner=ctx.label, mnemonic="DebSourceFetch", inputs=(), outputs=(out,),
            params={"archive": source.archive, "path": f"{source.directory}/{file.name}", "sha256": file.sha256,
                    "size": file.size, "snapshot": ""},
            function=fetch,
        ))
        fetched.append(out)
    dsc = next(a for a in fetched if a.path.endswith(".dsc"))
    tree = ctx.output(f"{name}.tree", tree=True)
    root = toolchain.toolchain(ctx)
    unpacked = f"{EXECROOT}/{tree.path}"
    ctx.add_action(Action(
        owner=ctx.label, mnemonic="DebSourceUnpack",
        inputs=tuple(dict.fromkeys((*fetched, *((root,) if root else ())))), outputs=(tree,),
        params={"env": {"SOURCE_DATE_EPOCH": str(ctx.source_date_epoch)}},
        command=(BASH, "-e", "-o", "pipefail", "-c",
                 f"exec 1>&2\ndpkg-source --no-copy -x {dsc.path} {unpacked}\nrm -rf {unpacked}/.pc\n"),
        toolchain=root,
    ))
    return [DefaultInfo(files=(tree,)), TreeInfo(tree)]


RULE = Rule(
    name="deb_source",
    doc=(
        "A Debian source package by name, resolved by `mk lock` against the signed Sources indices into a "
        "lockfile beside the BUILD file (the newest version in `suites`, or a pinned 'name=version'). Its "
        ".dsc, .orig.tar.* and .debian.tar.* are each fetched by sha256, then `dpkg-source -x` unpacks them in "
        "the sandbox with debian/patches applied: `toolchain` must hold dpkg-dev. Outputs `NAME.tree`, the "
        "patched source tree (for a `package`'s `src`)."
    ),
    attrs=(
        Attr("package", attrs.STRING, "The source package's name, optionally pinned as 'name=version'.",
             mandatory=True),
        Attr("suites", attrs.STRING_LIST, "Suites to resolve from; the newest version wins.",
             default=["bookworm", "bookworm-updates", "bookworm-security"]),
        Attr("components", attrs.STRING_LIST, "Archive components.", default=["main"]),
        Attr("lock", attrs.STRING, "The lockfile, relative to the package; default NAME.lock.json.", default=""),
        Attr("keyring", attrs.STRING, "OpenPGP keyring that signs the archives' Release files (used by "
             "`mk lock`); relative paths are from the workspace root.", default=DEFAULT_KEYRING),
        toolchain.ATTR,
    ),
    analyze=analyze,
)
