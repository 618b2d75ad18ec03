"""http_archive: a source tarball from a URL, pinned by sha256, unpacked safely into a tree.

The download is a fixed-output action: it keeps the file only if it has the promised sha256, and
a file with that sha256 already in the local store or the remote cache (fetched before, from any
URL) is copied from there instead. The tarball is then imported member by member (see `mk.rules.tarball`),
which refuses absolute paths, `..`, links out of the tree and archives that are not whole.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse

from mk.cache.tree import Entry, Kind, Tree, TreeError, normalise, shown
from mk.engine import attrs
from mk.engine.actions import Action, ActionIO
from mk.engine.errors import MkError
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.rules.deb.download import DownloadError, download, redact
from mk.rules.providers import TreeInfo
from mk.rules.tarball import import_tar

_SHA256 = re.compile(r"[0-9a-f]{64}")


def fetch(io: ActionIO) -> None:
    """Fixed-output download: nothing is kept unless its sha256 is the one declared."""
    sha256, url = io.string("sha256"), io.string("url")
    out = io.output()
    fixed = io.fixed_outputs
    if fixed.from_store(sha256, out) or (fixed.remote_state() is None and fixed.from_remote(sha256, out)):
        return
    try:
        download(url, out, sha256=sha256)
    except DownloadError as e:
        raise ValueError(str(e)) from None
    fixed.keep(sha256, out)


def unpack(io: ActionIO) -> None:
    archive = io.string("archive")
    with open(io.inputs[archive], "rb") as f:
        tree = import_tar(f, io.cas, f"{io.string('url')} ({posixpath.basename(archive)})")
    prefix = io.string("strip_prefix")
    io.write_tree(strip(tree, prefix, io.string("url")) if prefix else tree)


def strip(tree: Tree, prefix: str, what: str) -> Tree:
    """The tree below `prefix`, which every entry must lie in (a tarball's one top folder)."""
    entries = []
    for entry in tree.entries:
        if entry.path == prefix and entry.kind is Kind.DIR:
            continue
        if not entry.path.startswith(prefix + "/"):
            raise ValueError(f"{what}: '{shown(entry.path)}' is not under strip_prefix '{prefix}'")
        path = entry.path[len(prefix) + 1:]
        target = entry.target[len(prefix) + 1:] if entry.kind is Kind.HARDLINK else entry.target
        entries.append(Entry(path, entry.kind, entry.mode, entry.uid, entry.gid, entry.digest, entry.size, target,
                             entry.major, entry.minor))
    try:
        return Tree.build(entries)
    except TreeError as e:
        raise ValueError(f"{what}: {e}") from None


def analyze(ctx: RuleContext) -> list[Provider]:
    url, sha256, prefix = ctx.string("url"), ctx.string("sha256"), ctx.string("strip_prefix")
    if not _SHA256.fullmatch(sha256):
        raise MkError(f"http_archive {ctx.label}: sha256 '{sha256}' is not 64 lowercase hex digits")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "file") or not parts.path:
        raise MkError(f"http_archive {ctx.label}: url '{redact(url)}' is not an http, https or file URL of a file")
    if prefix:
        try:
            prefix = normalise(prefix)
        except TreeError as e:
            raise MkError(f"http_archive {ctx.label}: strip_prefix {e}") from None
    name = ctx.label.name
    archive = ctx.output(f"{name}.archive/{posixpath.basename(parts.path)}")
    ctx.add_action(Action(owner=ctx.label, mnemonic="HttpFetch", inputs=(), outputs=(archive,),
                          params={"url": url, "sha256": sha256}, function=fetch))
    tree = ctx.output(f"{name}.tree", tree=True)
    ctx.add_action(Action(owner=ctx.label, mnemonic="Unpack", inputs=(archive,), outputs=(tree,),
                          params={"archive": archive.path, "url": redact(url), "strip_prefix": prefix},
                          function=unpack))
    return [DefaultInfo(files=(tree,)), TreeInfo(tree)]


RULE = Rule(
    name="http_archive",
    doc=(
        "A tarball (plain, gzip, xz, bzip2 or zstd) downloaded from `url` and unpacked into `NAME.tree`, as "
        "Bazel's http_archive does. The download is fixed-output: it is kept only if its sha256 is `sha256`, "
        "so a changed file at the URL fails the build, naming it, instead of changing it. Members are "
        "imported safely: an absolute path, a `..`, a link out of the tree or a truncated archive is refused. "
        "Members keep their modes and owners."
    ),
    attrs=(
        Attr("url", attrs.STRING, "Where the tarball is: an http, https or file URL.", mandatory=True),
        Attr("sha256", attrs.STRING, "The tarball's sha256, in hex.", mandatory=True),
        Attr("strip_prefix", attrs.STRING, "A folder every member lies in (such as 'busybox-1.36.1/'), dropped "
             "from their paths.", default=""),
    ),
    analyze=analyze,
)
