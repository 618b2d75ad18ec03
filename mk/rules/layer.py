"""layer: a filesystem tree made of files, folders, links, devices, users and imported tarballs."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree, TreeError, check_symlink, dest_path, merge
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.errors import MkError
from mk.engine.rule_api import Attr, AttrType, Rule, RuleContext, TargetInfo
from mk.rules.rootfs import TREE_SUFFIX
from mk.rules.tarball import import_tar


def build_layer(io: ActionIO) -> None:
    p = io.params
    layers: list[Tree] = []
    for tar_path in _strings(p["tars"]):
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
    io.outputs[next(iter(io.outputs))].write_bytes(tree.encode())


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


def _strings(value: object) -> list[str]:
    assert isinstance(value, list)
    return [str(v) for v in value]


def _mode(value: object, default: int) -> int:
    return default if value is None else _int(value)


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def analyze(ctx: RuleContext) -> TargetInfo:
    modes = _parse_modes(ctx)
    owners = _parse_owners(ctx)
    files: list[list[object]] = []
    inputs: list[Artifact] = []
    file_attr = ctx.attrs["files"]
    assert isinstance(file_attr, dict)
    for (dest, label), dep in zip(file_attr.items(), ctx.deps.get("files", ()), strict=True):
        if len(dep.files) == 1 and not dest.endswith("/"):
            placed = [(_dest(ctx, dest), dep.files[0])]
        elif dest.endswith("/"):
            placed = [(_dest(ctx, dest + os.path.basename(f.path)), f) for f in dep.files]
        else:
            raise MkError(f"layer {ctx.label}: '{label}' gives {len(dep.files)} files; "
                          f"end the destination with '/' to place them in a folder ('{dest}/')")
        for path, artifact in placed:
            uid, gid = owners.get(path, (0, 0))
            files.append([path, artifact.path, modes.get(path), uid, gid])
            inputs.append(artifact)
    directories = [[_dest(ctx, d), modes.get(_dest(ctx, d)), *owners.get(_dest(ctx, d), (0, 0))]
                   for d in ctx.strings("directories")]
    symlinks = []
    for link, target in _dict(ctx, "symlinks").items():
        try:
            check_symlink(_dest(ctx, link), target)
        except TreeError as e:
            raise MkError(f"layer {ctx.label}: {e}") from None
        symlinks.append([_dest(ctx, link), target])
    devices = [[_dest(ctx, d), *_device(ctx, d, spec), modes.get(_dest(ctx, d)), *owners.get(_dest(ctx, d), (0, 0))]
               for d, spec in _dict(ctx, "devices").items()]
    tars = ctx.files("tars")
    out = ctx.output(ctx.label.name + TREE_SUFFIX)
    ctx.add_action(Action(
        owner=ctx.label,
        mnemonic="Layer",
        version=1,
        inputs=tuple(dict.fromkeys([*inputs, *tars])),
        outputs=(out,),
        params={
            "files": sorted(files, key=lambda row: str(row[0])),
            "directories": sorted(directories, key=lambda row: str(row[0])),
            "symlinks": sorted(symlinks),
            "devices": sorted(devices, key=lambda row: str(row[0])),
            "users": [_user(ctx, u) for u in ctx.strings("users")],
            "groups": [_group(ctx, g) for g in ctx.strings("groups")],
            "tars": [t.path for t in tars],
        },
        function=build_layer,
    ))
    return TargetInfo(files=(out,))


def _dest(ctx: RuleContext, path: str) -> str:
    try:
        return dest_path(path)
    except TreeError as e:
        raise MkError(f"layer {ctx.label}: destination {e}") from None


def _dict(ctx: RuleContext, name: str) -> Mapping[str, str]:
    value = ctx.attrs[name]
    assert isinstance(value, dict)
    return value


def _parse_modes(ctx: RuleContext) -> dict[str, int]:
    modes = {}
    for path, text in _dict(ctx, "modes").items():
        try:
            mode = int(text, 8)
        except ValueError:
            mode = -1
        if not 0 <= mode <= 0o7777:
            raise MkError(f"layer {ctx.label}: mode '{text}' for '{path}' is not an octal mode like '0755'")
        modes[_dest(ctx, path)] = mode
    return modes


def _parse_owners(ctx: RuleContext) -> dict[str, tuple[int, int]]:
    owners = {}
    for path, text in _dict(ctx, "owners").items():
        uid, _, gid = text.partition(":")
        if not (uid.isdigit() and gid.isdigit()):
            raise MkError(f"layer {ctx.label}: owner '{text}' for '{path}' must be numeric 'uid:gid'")
        owners[_dest(ctx, path)] = (int(uid), int(gid))
    return owners


def _device(ctx: RuleContext, path: str, spec: str) -> tuple[str, int, int]:
    parts = spec.split()
    if len(parts) != 3 or parts[0] not in ("c", "b") or not (parts[1].isdigit() and parts[2].isdigit()):
        raise MkError(f"layer {ctx.label}: device '{path}' must be 'c MAJOR MINOR' or 'b MAJOR MINOR', got '{spec}'")
    return (Kind.CHAR.value if parts[0] == "c" else Kind.BLOCK.value, int(parts[1]), int(parts[2]))


def _user(ctx: RuleContext, spec: str) -> list[object]:
    parts = spec.split(":")
    if len(parts) != 6 or not (parts[1].isdigit() and parts[2].isdigit()) or not parts[0]:
        raise MkError(f"layer {ctx.label}: user '{spec}' must be 'name:uid:gid:gecos:home:shell'")
    return [parts[0], int(parts[1]), int(parts[2]), parts[3], parts[4], parts[5]]


def _group(ctx: RuleContext, spec: str) -> list[object]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1].isdigit() or not parts[0]:
        raise MkError(f"layer {ctx.label}: group '{spec}' must be 'name:gid' or 'name:gid:member,member'")
    return [parts[0], int(parts[1]), parts[2] if len(parts) == 3 else ""]


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
        Attr("files", AttrType.STRING_KEYED_LABEL_DICT,
             "Destination path -> label. A label giving several files needs a destination ending in '/'.",
             default={}),
        Attr("directories", AttrType.STRING_LIST, "Folders to create (mode 0755 unless set in `modes`).",
             default=[]),
        Attr("symlinks", AttrType.STRING_DICT, "Link path -> target. Relative targets may not leave the tree.",
             default={}),
        Attr("devices", AttrType.STRING_DICT, "Device path -> 'c MAJOR MINOR' or 'b MAJOR MINOR' (mode 0600 "
             "unless set in `modes`).", default={}),
        Attr("modes", AttrType.STRING_DICT, "Path -> octal mode, e.g. {'/usr/bin/tool': '0755'}.", default={}),
        Attr("owners", AttrType.STRING_DICT, "Path -> 'uid:gid' (numeric).", default={}),
        Attr("users", AttrType.STRING_LIST, "Accounts as 'name:uid:gid:gecos:home:shell'; writes /etc/passwd and "
             "/etc/shadow with no passwords (key logins only).", default=[]),
        Attr("groups", AttrType.STRING_LIST, "Groups as 'name:gid' or 'name:gid:member,member'; writes /etc/group.",
             default=[]),
        Attr("tars", AttrType.LABEL_LIST, "Tarballs (any compression) to import first; later content wins.",
             default=[]),
    ),
    analyze=analyze,
)
