"""layer: a filesystem tree made of files, folders, links, devices, users and imported tarballs."""

from __future__ import annotations

import os
import stat
from typing import Any

from mk.cache.cas import ContentStore
from mk.cache.tree import MAJOR_MAX, MINOR_MAX, Entry, Kind, Tree, TreeError, check_symlink, dest_path, merge
from mk.engine import attrs
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.errors import MkError
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.rules.providers import TreeInfo
from mk.rules.tarball import import_tar


def build_layer(io: ActionIO) -> None:
    p = io.params
    layers: list[Tree] = []
    for tar_path in io.strings("tars"):
        with open(io.inputs[tar_path], "rb") as tarball:
            layers.append(import_tar(tarball, io.cas, f"tarball '{tar_path}'"))
    entries: list[Entry] = []
    for dest, source, mode, uid, gid in _rows(p["files"]):
        local = io.inputs[str(source)]
        default = 0o755 if os.stat(local).st_mode & stat.S_IXUSR else 0o644
        digest = io.cas.put_file(local)
        entries.append(Entry(str(dest), Kind.FILE, _mode(mode, default), _int(uid), _int(gid), digest=digest,
                             size=os.stat(local).st_size))
    for dest, mode, uid, gid in _rows(p["directories"]):
        entries.append(Entry(str(dest), Kind.DIR, _mode(mode, 0o755), _int(uid), _int(gid)))
    for dest, target in _rows(p["symlinks"]):
        entries.append(Entry(str(dest), Kind.SYMLINK, 0o777, target=str(target)))
    for dest, kind, major, minor, mode, uid, gid in _rows(p["devices"]):
        entries.append(Entry(str(dest), Kind(str(kind)), _mode(mode, 0o600), _int(uid), _int(gid),
                             major=_int(major), minor=_int(minor)))
    entries.extend(_account_files(io.cas, _rows(p["users"]), _rows(p["groups"])))
    try:
        tree = merge([*layers, Tree.build(entries)])
    except TreeError as e:
        raise ValueError(str(e)) from None
    io.write_tree(tree)


def _account_files(cas: ContentStore, users: list[list[object]], groups: list[list[object]]) -> list[Entry]:
    """/etc/passwd, /etc/group and /etc/shadow, sorted by id. No account has a password: "*" lets
    nobody log in by password but, unlike a locked "!", still lets sshd accept keys."""
    if not users and not groups:
        return []
    passwd = "".join(f"{n}:x:{u}:{g}:{gecos}:{home}:{shell}\n" for u, n, g, gecos, home, shell in sorted(
        (_int(u), str(n), _int(g), str(gecos), str(home), str(shell)) for n, u, g, gecos, home, shell in users))
    shadow = "".join(f"{n}:*:1::::::\n" for _, n in sorted((_int(u), str(n)) for n, u, *_ in users))
    group = "".join(f"{n}:x:{g}:{members}\n" for g, n, members in sorted(
        (_int(g), str(n), str(m)) for n, g, m in groups))
    files = []
    for path, text, mode in (("etc/passwd", passwd, 0o644), ("etc/group", group, 0o644), ("etc/shadow", shadow, 0o600)):
        data = text.encode()
        files.append(Entry(path, Kind.FILE, mode, digest=cas.put_bytes(data), size=len(data)))
    return files


def _rows(value: object) -> list[list[object]]:
    assert isinstance(value, list)
    return value


def _mode(value: object, default: int) -> int:
    return default if value is None else _int(value)


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def analyze(ctx: RuleContext) -> list[Provider]:
    modes = {_dest(path): mode for path, mode in _typed(ctx, "modes").items()}
    owners = {_dest(path): ids for path, ids in _typed(ctx, "owners").items()}
    files: list[list[object]] = []
    inputs: list[Artifact] = []
    for (dest, label), dep in zip(_typed(ctx, "files").items(), ctx.deps.get("files", ()), strict=True):
        if len(dep.files) == 1 and not dest.endswith("/"):
            placed = [(_dest(dest), dep.files[0])]
        elif dest.endswith("/"):
            placed = [(_dest(dest + os.path.basename(f.path)), f) for f in dep.files]
        else:
            raise MkError(f"layer {ctx.label}: '{label}' gives {len(dep.files)} files; "
                          f"end the destination with '/' to place them in a folder ('{dest}/')")
        for path, artifact in placed:
            uid, gid = owners.get(path, (0, 0))
            files.append([path, artifact.path, modes.get(path), uid, gid])
            inputs.append(artifact)
    directories = [[d, modes.get(d), *owners.get(d, (0, 0))] for d in map(_dest, ctx.strings("directories"))]
    symlinks = sorted([_dest(link), target] for link, target in _typed(ctx, "symlinks").items())
    devices = [[_dest(d), kind, major, minor, modes.get(_dest(d)), *owners.get(_dest(d), (0, 0))]
               for d, (kind, major, minor) in _typed(ctx, "devices").items()]
    _refuse_conflicts(ctx, files, directories, symlinks, devices)
    tars = ctx.files("tars")
    out = ctx.output(ctx.label.name + ".tree", tree=True)
    ctx.add_action(Action(
        owner=ctx.label,
        mnemonic="Layer",
        inputs=tuple(dict.fromkeys([*inputs, *tars])),
        outputs=(out,),
        params={
            "files": sorted(files, key=lambda row: str(row[0])),
            "directories": sorted(directories, key=lambda row: str(row[0])),
            "symlinks": symlinks,
            "devices": sorted(devices, key=lambda row: str(row[0])),
            "users": [list(u) for u in _typed(ctx, "users")],
            "groups": [list(g) for g in _typed(ctx, "groups")],
            "tars": [t.path for t in tars],
        },
        function=build_layer,
    ))
    return [DefaultInfo(files=(out,)), TreeInfo(out)]


def _refuse_conflicts(ctx: RuleContext, *kinds: list[list[object]]) -> None:
    """One path declared twice (a folder and a symlink, say) is an error, not a silent choice."""
    names = ("files", "directories", "symlinks", "devices")
    first: dict[str, str] = {}
    for name, rows in zip(names, kinds, strict=True):
        for row in rows:
            path = str(row[0])
            if path in first:
                raise MkError(f"layer {ctx.label}: '/{path}' is declared in both '{first[path]}' and '{name}'")
            first[path] = name


def _typed(ctx: RuleContext, name: str) -> Any:
    return ctx.attrs[name]


def _dest(path: str) -> str:
    try:
        return dest_path(path)
    except TreeError as e:
        raise ValueError(f"destination {e}") from None


def _folder(path: str) -> str:
    _dest(path)
    return path


def _symlink(link: str, target: str) -> str:
    try:
        check_symlink(_dest(link), target)
    except TreeError as e:
        raise ValueError(str(e)) from None
    return target


def _device(path: str, spec: str) -> tuple[str, int, int]:
    form = "'c MAJOR MINOR' or 'b MAJOR MINOR'"
    parts = attrs.split_fields(spec, "", (3,), f"{form} (device '{path}')")
    if parts[0] not in ("c", "b") or not (parts[1].isdigit() and parts[2].isdigit()):
        raise ValueError(f"device '{path}' must be {form}, got '{spec}'")
    major, minor = int(parts[1]), int(parts[2])
    if major > MAJOR_MAX or minor > MINOR_MAX:  # what Linux's dev_t holds
        raise ValueError(f"device '{path}': the major must be at most {MAJOR_MAX} and the minor at most "
                         f"{MINOR_MAX}, got '{spec}'")
    return (Kind.CHAR.value if parts[0] == "c" else Kind.BLOCK.value, major, minor)


def _user(spec: str) -> tuple[str, int, int, str, str, str]:
    name, uid, gid, gecos, home, shell = attrs.split_fields(spec, ":", (6,), "'name:uid:gid:gecos:home:shell'")
    if not name:
        raise ValueError(f"user '{spec}' must be 'name:uid:gid:gecos:home:shell'")
    return name, attrs.parse_id(uid, f"uid of user '{name}'"), attrs.parse_id(gid, f"gid of user '{name}'"), \
        gecos, home, shell


def _group(spec: str) -> tuple[str, int, str]:
    parts = attrs.split_fields(spec, ":", (2, 3), "'name:gid' or 'name:gid:member,member'")
    if not parts[0]:
        raise ValueError(f"group '{spec}' must be 'name:gid' or 'name:gid:member,member'")
    return parts[0], attrs.parse_id(parts[1], f"gid of group '{parts[0]}'"), parts[2] if len(parts) == 3 else ""


RULE = Rule(
    name="layer",
    doc=(
        "A filesystem tree: files from sources or other targets, folders, symlinks, device nodes, "
        "users and groups, on top of imported tarballs. Its output, `NAME.tree`, is a manifest in the "
        "content store; `rootfs` merges layers and `tar`, `cpio` and `oci_image` write them out. "
        "Owners are numeric and default to root; file modes default to 0755 for executable sources "
        "and 0644 otherwise. Tarballs are imported safely: members with absolute paths, `..`, links "
        "that escape the tree or paths under a symlink are refused."
    ),
    attrs=(
        Attr("files", attrs.LABEL_DICT,
             "Destination path -> label. A label giving several files needs a destination ending in '/'.",
             default={}),
        Attr("directories", attrs.records("folder paths", _folder),
             "Folders to create (mode 0755 unless set in `modes`).", default=[]),
        Attr("symlinks", attrs.keyed_records("link target", _symlink),
             "Link path -> target. Relative targets may not leave the tree.", default={}),
        Attr("devices", attrs.keyed_records("device", _device),
             "Device path -> 'c MAJOR MINOR' or 'b MAJOR MINOR' (mode 0600 unless set in `modes`).", default={}),
        Attr("modes", attrs.keyed_records("octal mode", attrs.octal_mode),
             "Path -> octal mode, e.g. {'/usr/bin/tool': '0755'}.", default={}),
        Attr("owners", attrs.keyed_records("'uid:gid'", attrs.owner), "Path -> 'uid:gid' (numeric).", default={}),
        Attr("users", attrs.records("accounts", _user),
             "Accounts as 'name:uid:gid:gecos:home:shell'; writes /etc/passwd and /etc/shadow with no passwords "
             "(key logins only).", default=[]),
        Attr("groups", attrs.records("groups", _group),
             "Groups as 'name:gid' or 'name:gid:member,member'; writes /etc/group.", default=[]),
        Attr("tars", attrs.LABEL_LIST, "Tarballs (any compression) to import first; later content wins.",
             default=[]),
    ),
    analyze=analyze,
)
