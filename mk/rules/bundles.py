"""Services as OCI runtime bundles in the image: `/containers/NAME/config.json` and `rootfs/`.

A service with its own layers gets them under `rootfs/`; one without gets an empty `rootfs/`
that its supervisor binds the image's root onto at boot (a read-only view: crun remounts it so).
The bundle is checked against the root the service will see: its program, user and group must be
there, and each path it may write must be a directory (mk adds the missing ones, as mount points).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree, merge
from mk.engine.errors import did_you_mean
from mk.rules.image_check import RootView
from mk.rules.oci_runtime import Isolation, Process, runtime_config

CONTAINERS = "containers"
MOUNT_POINTS = ("proc", "sys", "dev")  # what crun mounts afresh in every service's root


@dataclass(frozen=True)
class Bundle:
    entries: list[Entry]  # the bundle's, and in the image's root the mount points a root view needs
    problems: list[str]
    owner: str = "0:0"  # uid:gid the service runs as (what its persistent paths are given to)


def bundle(image_root: Tree, cas: ContentStore, spec: dict[str, object], layers: list[Tree],
           persistent: frozenset[str]) -> Bundle:
    """The entries of the service `spec` (a ServiceInfo's fields) for the image whose root is
    `image_root`; `layers` are the service's own (empty: it sees the image's root)."""
    name, writable = str(spec["name"]), _pairs(spec["writable"])
    own_root = merge(layers) if layers else None
    view = RootView(own_root or image_root, cas)
    shown = f"{'onboot step' if spec['onboot'] else 'service'} '{name}'"
    problems = [f"{shown}: the writable path {path} is `persistent`, but the image declares no persistent "
                f"mount there (its `persistent`: {', '.join(sorted(persistent)) or 'none'})"
                for path, kind in writable if kind == "persistent" and path not in persistent]
    args = _strings(spec["command"])
    if reason := view.why_not(args[0]):
        problems.append(f"{shown}: its command {args[0]}: {reason}")
    ids = _ids(view, str(spec["user"]), str(spec["group"]), shown, problems)
    points = [*MOUNT_POINTS, *(path.lstrip("/") for path, _ in writable)]
    mount_points = []
    for path in points:
        found = view.resolve(path)
        if found.entry is None:
            mount_points.append(Entry(found.path, Kind.DIR, 0o755))
        elif found.entry.kind is not Kind.DIR:
            problems.append(f"{shown}: it may write /{path}, which is not a directory in its root")
    if problems or ids is None:
        return Bundle([], problems)
    uid, gid = ids
    config = runtime_config(
        Process(tuple(args), uid, gid, tuple(_strings(spec["capabilities"])), tuple(_strings(spec["env"])),
                str(spec["workdir"])),
        Isolation(name, spec["network"] == "own", spec["pid"] == "own",
                  tuple(p for p, kind in writable if kind == "tmpfs"),
                  tuple(p for p, kind in writable if kind == "persistent")),
    )
    prefix = f"{CONTAINERS}/{name}"
    entries = [Entry(f"{prefix}/config.json", Kind.FILE, 0o644, digest=cas.put_bytes(config), size=len(config)),
               Entry(f"{prefix}/rootfs", Kind.DIR, 0o755)]
    if own_root is None:
        return Bundle(entries + mount_points, [], f"{uid}:{gid}")
    inside = Tree.build([*own_root.entries, *mount_points]).entries
    entries += [dataclasses.replace(e, path=f"{prefix}/rootfs/{e.path}",
                                    target=f"{prefix}/rootfs/{e.target}" if e.kind is Kind.HARDLINK else e.target)
                for e in inside]
    return Bundle(entries, [], f"{uid}:{gid}")


def _ids(view: RootView, user: str, group: str, shown: str, problems: list[str]) -> tuple[int, int] | None:
    """The uid and gid the service runs as, from its root's /etc/passwd and /etc/group."""
    users = _table(view, "etc/passwd", 4)
    groups = _table(view, "etc/group", 3)
    if user.isdigit():
        uid = int(user)
        gid = next((int(f[3]) for f in users.values() if f[2] == user and f[3].isdigit()), uid)
    elif user in users and users[user][2].isdigit() and users[user][3].isdigit():
        uid, gid = int(users[user][2]), int(users[user][3])
    else:
        problems.append(f"{shown}: its user '{user}' is not in its root's /etc/passwd{did_you_mean(user, users)}")
        return None
    if group.isdigit():
        return uid, int(group)
    if group:
        if group not in groups or not groups[group][2].isdigit():
            problems.append(f"{shown}: its group '{group}' is not in its root's /etc/group"
                            f"{did_you_mean(group, groups)}")
            return None
        return uid, int(groups[group][2])
    return uid, gid


def _table(view: RootView, path: str, fields: int) -> dict[str, list[str]]:
    """An /etc/passwd-like file by its first field (rows with at least `fields` fields)."""
    data = view.read(path) or b""
    rows = [line.split(":") for line in data.decode(errors="replace").splitlines() if line and line[0] != "#"]
    return {row[0]: row for row in rows if len(row) >= fields}


def _pairs(value: object) -> list[tuple[str, str]]:
    assert isinstance(value, list)
    return [(str(a), str(b)) for a, b in value]


def _strings(value: object) -> list[str]:
    assert isinstance(value, list)
    return [str(v) for v in value]
