"""deb_packages: Debian packages from a lockfile, fetched by sha256 and merged into one tree."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from typing import Protocol, TypeVar

from mk.cache.tree import Entry, Kind, Tree, TreeError, check_symlink, dest_path, merge
from mk.engine import attrs
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.errors import MkError
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.rules.deb.debfile import MERGED_DIRS, DebError, read_deb
from mk.rules.deb.dpkg import InstalledPackage, database
from mk.rules.deb.fetch import open_pinned
from mk.rules.deb.lockfile import LockedPackage, Lockfile, Manifest
from mk.rules.deb.sbom import spdx
from mk.rules.providers import SbomInfo, TreeInfo
from mk.rules.write_file import write

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


# Written in a package name (`linux-image-cloud-$(ARCH)`), it stands for the architecture resolved for.
ARCH_VARIABLE = "$(ARCH)"
# The architecture whose lockfile is plain NAME.lock.json, as every lockfile was before mk built for others.
_FIRST_ARCHITECTURE = "amd64"


def architecture(ctx_attrs: dict[str, object], platform_arch: str) -> str:
    """The Debian architecture a package set is resolved for: its own, or the target platform's."""
    return str(ctx_attrs["architecture"]) or platform_arch


def manifest(ctx_attrs: dict[str, object], arch: str) -> Manifest:
    def strings(name: str) -> tuple[str, ...]:
        value = ctx_attrs[name]
        assert isinstance(value, list)
        return tuple(str(v).replace(ARCH_VARIABLE, arch) for v in value)

    return Manifest(strings("suites"), strings("components"), arch,
                    tuple(sorted(strings("packages"))), tuple(sorted(strings("excludes"))))


def lock_path(name: str, attrs: dict[str, object], arch: str = _FIRST_ARCHITECTURE) -> str:
    """One lockfile per architecture: NAME.lock.json for amd64, NAME.ARCH.lock.json for another (the
    `lock` attribute, if given, with .ARCH put before its extension the same way)."""
    path = str(attrs["lock"]) or f"{name}.lock.json"
    if arch == _FIRST_ARCHITECTURE:
        return path
    stem, dot, extension = path.rpartition(".lock.json") if path.endswith(".lock.json") else path.rpartition(".")
    return f"{stem}.{arch}{dot}{extension}" if dot else f"{path}.{arch}"


# ---- actions ---------------------------------------------------------------------------------


def unpack(io: ActionIO) -> None:
    """One package: read where the store keeps it (most often) or fetched, then read into a tree.
    One action rather than two (a fetch whose output the other reads): an action's own work (its scratch
    folders, its outputs stored and checked, its action cache entry) cost as much CPU time as
    reading a small package, and the .deb need not be hashed again as an action's output."""
    name = io.string("deb")
    try:
        with open_pinned(io, name) as f:
            contents = read_deb(f, io.cas, name)
    except DebError as e:
        raise ValueError(str(e)) from None
    io.write_tree(contents.tree, 0)
    meta = {"control": contents.control, "md5sums": contents.md5sums, "conffiles": contents.conffiles,
            "paths": list(contents.paths)}
    io.output(1).write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")


def combine(io: ActionIO) -> None:
    """All packages' trees, then merged-/usr links, alternatives and the dpkg database."""
    packages = io.params["packages"]
    assert isinstance(packages, list)
    trees, installed = [], []
    for name, tree_path, meta_path in packages:
        trees.append(io.read_tree(tree_path))
        meta = json.loads(io.read_bytes(meta_path).decode("utf-8"))
        installed.append(InstalledPackage(name, meta["control"], meta["md5sums"], meta["conffiles"],
                                          tuple(meta["paths"])))
    extra = [Entry(d, Kind.SYMLINK, 0o777, target=f"usr/{d}") for d in MERGED_DIRS if _has_dir(trees, f"usr/{d}")]
    alternatives = io.params["alternatives"]
    assert isinstance(alternatives, list)
    for link, target in alternatives:
        name = posixpath.basename(str(link))
        extra.append(Entry(f"etc/alternatives/{name}", Kind.SYMLINK, 0o777, target=str(target)))
        extra.append(Entry(str(link), Kind.SYMLINK, 0o777, target=f"/etc/alternatives/{name}"))
    extra += database(installed, io.cas)
    try:
        tree = merge([*trees, Tree.build(extra)])
    except TreeError as e:
        raise ValueError(str(e)) from None
    io.write_tree(tree)


def _has_dir(trees: list[Tree], path: str) -> bool:
    return any(e.path == path and e.kind is Kind.DIR for t in trees for e in t.entries)


# ---- analysis --------------------------------------------------------------------------------


def analyze(ctx: RuleContext) -> list[Provider]:
    lock = read_lockfile(ctx)
    name = ctx.label.name
    prefix = f"{name}.debs/"
    extracted: list[Artifact] = []
    packages: list[list[str]] = []
    for package in lock.packages:
        # A package of every architecture is fetched and unpacked once for all of them
        # (named by version too, for two platforms' lockfiles may hold different versions of it).
        shared = package.architecture == "all"
        stem = f"{prefix}{_deb_name(package)}" if shared else f"{prefix}{package.name}"
        tree = ctx.output(f"{stem}.tree", tree=True, shared=shared)
        meta = ctx.output(f"{stem}.dpkg.json", shared=shared)
        ctx.add_action(Action(
            owner=ctx.label, mnemonic="DebUnpack", inputs=(), outputs=(tree, meta),
            params={"archive": package.archive, "path": package.path, "sha256": package.sha256, "size": package.size,
                    "snapshot": lock.snapshots.get(package.archive, ""), "deb": _deb_name(package)},
            function=unpack,
        ))
        extracted += [tree, meta]
        packages.append([package.name, tree.path, meta.path])
    out = ctx.output(name + ".tree", tree=True)
    ctx.add_action(Action(
        owner=ctx.label, mnemonic="DebMerge", inputs=tuple(extracted), outputs=(out,),
        params={"packages": packages, "alternatives": _alternatives(ctx)},
        function=combine, staged_inputs=False,  # 98 files for the sshd set, read from the store instead
    ))
    sbom = ctx.output(f"{name}.spdx.json")
    distro = ctx.strings("suites")[0] if ctx.strings("suites") else "debian"
    text = spdx(str(ctx.label), lock.packages, ctx.source_date_epoch, distro)
    ctx.add_action(Action(owner=ctx.label, mnemonic="Sbom", inputs=(), outputs=(sbom,),
                          params={"content": text, "executable": False}, function=write))
    return [DefaultInfo(files=(out, sbom)), TreeInfo(out), SbomInfo(sbom)]


def read_lockfile(ctx: RuleContext) -> Lockfile:
    arch = architecture(dict(ctx.attrs), ctx.platform.arch)
    return checked_lockfile(ctx, "deb_packages", Lockfile.loads, manifest(dict(ctx.attrs), arch),
                            "the package list, suites or excludes", arch)


class _Locked(Protocol):
    @property
    def manifest_digest(self) -> str: ...


L = TypeVar("L", bound=_Locked)


def checked_lockfile(ctx: RuleContext, rule: str, loads: Callable[[str], L], wanted: Manifest, what: str,
                     arch: str = _FIRST_ARCHITECTURE) -> L:
    """The target's lockfile for `arch`, read by `loads`, if it was made from the manifest `wanted`
    (`what` names what would have changed); else an error saying to run `mk lock`."""
    path = lock_path(ctx.label.name, dict(ctx.attrs), arch)
    shown = f"{ctx.label.package}/{path}".lstrip("/")
    first = arch == _FIRST_ARCHITECTURE
    command = f"mk lock {ctx.label}" + ("" if first else f" --platform linux/{arch}")
    text = ctx.read_source(path)
    if text is None:
        raise MkError(f"{rule} {ctx.label}: no lockfile '{shown}'{'' if first else f' for architecture {arch}'}; "
                      f"run `{command}` to create it")
    try:
        lock = loads(text)
    except ValueError as e:
        raise MkError(f"{rule} {ctx.label}: lockfile '{shown}' is unreadable ({e}); "
                      f"run `{command}` to rewrite it") from None
    if lock.manifest_digest != wanted.digest():
        raise MkError(f"{rule} {ctx.label}: lockfile '{shown}' is stale ({what} changed since it was written); "
                      f"run `{command}`")
    return lock


def _deb_name(p: LockedPackage) -> str:
    return f"{p.name}_{p.version.replace(':', '%3a')}_{p.architecture}.deb"


def _alternatives(ctx: RuleContext) -> list[list[str]]:
    value = ctx.attrs["alternatives"]
    assert isinstance(value, dict)
    links = []
    for link, target in sorted(value.items()):
        try:
            path = dest_path(link)
            check_symlink(path, target)
        except TreeError as e:
            raise MkError(f"deb_packages {ctx.label}: alternative {e}") from None
        links.append([path, target])
    return links


RULE = Rule(
    name="deb_packages",
    doc=(
        "Debian packages, resolved by `mk lock` into a lockfile checked into the workspace, each fetched by "
        "its sha256 (from the first place that has it: the local and the remote cache, the mirror, a snapshot "
        "archive, extra mirrors) and unpacked (safely, without running maintainer scripts) into one tree with "
        "Debian 12's merged /usr and a dpkg database. Outputs `NAME.tree` (for `rootfs`, `layer`s and images) and "
        "`NAME.spdx.json`, an SPDX 2.3 SBOM. Maintainer scripts are not run: declare what they would have "
        "done (users and groups in a `layer`, `update-alternatives` links in `alternatives`). A build whose "
        "manifest no longer matches the lockfile stops and asks for `mk lock`."
    ),
    attrs=(
        Attr("packages", attrs.STRING_LIST, "Package names, optionally pinned as 'name=version'; `$(ARCH)` in "
             "one stands for the architecture (`linux-image-cloud-$(ARCH)`).", mandatory=True),
        Attr("suites", attrs.STRING_LIST, "Suites to resolve from; the newest version wins.",
             default=["bookworm", "bookworm-updates", "bookworm-security"]),
        Attr("components", attrs.STRING_LIST, "Archive components.", default=["main"]),
        Attr("architecture", attrs.STRING, "Debian architecture; default: the target platform's (`mk build "
             "--platform linux/arm64`: arm64), each resolved into its own lockfile by `mk lock --platform`.",
             default=""),
        Attr("excludes", attrs.STRING_LIST, "Packages never installed, even when something depends on them.",
             default=[]),
        Attr("lock", attrs.STRING, "The lockfile, relative to the package; default NAME.lock.json.", default=""),
        Attr("keyring", attrs.STRING, "OpenPGP keyring that signs the archives' Release files (used by "
             "`mk lock`); relative paths are from the workspace root.", default=DEFAULT_KEYRING),
        Attr("alternatives", attrs.STRING_DICT, "update-alternatives links: link -> target, e.g. "
             "{'/usr/bin/editor': '/usr/bin/vim.basic'}.", default={}),
    ),
    analyze=analyze,
    uses_platform=True,
)
