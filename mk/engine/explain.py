"""`mk explain`: why each action of the last build ran.

After every build that ran something, the key material of each action it considered (the very
`KeyMaterial` the rebuilder hashed into the key) is recorded in a small msgpack file per
workspace, together with the material the same action had the time before. An action is
identified by owner label, mnemonic and first output path, which survive any change to what
goes into its key. `mk explain` compares the two, part by part.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from mk.cache.fsutil import read_parsed, write_parsed
from mk.cache.local import workspace_name
from mk.engine.actions import Action
from mk.engine.cache_parts import EXPLAIN
from mk.engine.keys import KeyMaterial
from mk.engine.platforms import Platform, host_platform, output_prefix

_FORMAT = 3  # 3: each material packed on its own
Material = dict[str, object]


def identity(action: Action) -> str:
    """Without the platform's output folder: the same action built for another platform is the same
    entry, so explain can say that the platform is what changed."""
    first = action.outputs[0].path if action.outputs else ""
    if action.platform is not None:
        first = first.removeprefix(output_prefix(Platform.parse(action.platform)))
    return f"{action.owner}|{action.mnemonic}|{first}"


@dataclass(frozen=True)
class Entry:
    label: str
    mnemonic: str
    output: str
    now: Material
    before: Material | None


class ExplainLog:
    """`<cache>/explain/<workspace>.msgpack`: the last material seen of every action, and the
    actions that executed in the last build with their material then and before."""

    def __init__(self, cache_root: Path, workspace_root: Path) -> None:
        self.file = cache_root / EXPLAIN.name / f"{workspace_name(workspace_root)}.msgpack"

    def _load(self) -> tuple[dict[str, bytes], list[dict[str, object]]]:
        """What was recorded (a copy): each action's material, packed, and the last build's entries."""
        try:
            seen, last = read_parsed(self.file, _parse)
        except OSError:
            return {}, []
        return dict(seen), last

    def record(self, seen_now: Iterable[tuple[Action, KeyMaterial]], executed: Iterable[Action]) -> None:
        """Remember this build: the material of every action it considered, and which ran."""
        seen, _ = self._load()
        current = {identity(a): {**m.record(), "target_platform": a.platform or str(host_platform())}
                   for a, m in seen_now}
        last = []
        for action in executed:
            ident = identity(action)
            if ident in current:
                last.append({"id": ident, "now": current[ident], "before": _unpacked(seen.get(ident))})
        # Each material stays packed on its own, so that recording 31 actions among 10,000 packs 31.
        seen.update({ident: msgpack.packb(material) for ident, material in current.items()})
        write_parsed(self.file, msgpack.packb({"format": _FORMAT, "seen": seen, "last": last}), (seen, last))

    def last_build(self) -> list[Entry]:
        _, last = self._load()
        entries = []
        for item in last:
            label, mnemonic, output = str(item["id"]).split("|", 2)
            now, before = item["now"], item["before"]
            assert isinstance(now, dict)
            entries.append(Entry(label, mnemonic, output, now, before if isinstance(before, dict) else None))
        return entries


def _parse(data: bytes) -> tuple[dict[str, bytes], list[dict[str, object]]]:
    try:
        loaded = msgpack.unpackb(data)
        if isinstance(loaded, dict) and loaded.get("format") == _FORMAT:
            seen = {str(k): v for k, v in dict(loaded["seen"]).items() if isinstance(v, bytes)}
            return seen, list(loaded["last"])
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        pass
    return {}, []


def _unpacked(material: bytes | None) -> object:
    """A recorded material; one that cannot be read is as good as none (explain says "first build")."""
    try:
        return None if material is None else msgpack.unpackb(material)
    except (ValueError, msgpack.UnpackException):
        return None


def _short(digest: object) -> str:
    return f"{str(digest)[:8]}…" if digest is not None else "none"


def reasons(entry: Entry) -> list[str]:
    """Why the action ran, one phrase per difference from its previous material."""
    before, now = entry.before, entry.now
    if before is None:
        return ["first build"]
    found: list[str] = []
    if "target_platform" in before and before["target_platform"] != now.get("target_platform"):
        found.append(f"target platform changed ({before['target_platform']} -> {now.get('target_platform')})")
    if before.get("schema") != now.get("schema"):
        found.append(f"key schema changed ({before.get('schema')} -> {now.get('schema')})")
    if before.get("implementation") != now.get("implementation"):
        found.append(_implementation_change(before.get("implementation"), now.get("implementation")))
    for kind, noun in (("inputs", "input "), ("params", "parameter "), ("tools", "")):
        old, new = before.get(kind) or {}, now.get(kind) or {}
        assert isinstance(old, dict) and isinstance(new, dict)
        for name in sorted(set(old) | set(new)):
            shown = noun + (f"'{name}'" if kind == "params" else name)
            if name not in old:
                found.append(f"{shown} added")
            elif name not in new:
                found.append(f"{shown} removed")
            elif old[name] != new[name] and kind == "params":  # digests of values say nothing
                found.append(f"{shown} changed")
            elif old[name] != new[name]:
                found.append(f"{shown} changed ({_short(old[name])} -> {_short(new[name])})")
    if before.get("command") != now.get("command"):
        found.append("command changed")
    if before.get("outputs") != now.get("outputs"):
        found.append("declared outputs changed")
    if before.get("platform") != now.get("platform"):
        found.append(f"platform changed ({before.get('platform')} -> {now.get('platform')})")
    return found or ["nothing in its key changed (its result was no longer in the cache)"]


def _implementation_change(old: object, new: object) -> str:
    if isinstance(old, list) and isinstance(new, list) and old[0] == new[0]:
        return f"implementation {new[0]} changed ({_short(old[1])} -> {_short(new[1])})"
    return f"implementation changed ({old[0] if isinstance(old, list) else 'a command'} -> " \
        f"{new[0] if isinstance(new, list) else 'a command'})"


def explain(entries: Iterable[Entry], labels: set[str]) -> list[str]:
    """Lines for the entries owned by `labels`, in a stable order."""
    lines: list[str] = []
    for entry in sorted(entries, key=lambda e: (e.label, e.mnemonic, e.output)):
        if entry.label in labels:
            lines.extend(f"{entry.mnemonic} {entry.label}: {reason}" for reason in reasons(entry))
    return lines
