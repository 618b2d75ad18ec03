"""`mk log TARGET`: what each action of a target printed when it last ran, failed runs included.

A log is a blob in the content store: an action result names the log of the run that made it,
and a failed command's output is stored too (see `execute`). This small file per workspace says,
for each action (owner label, mnemonic, first output: as `mk explain` names them), which log its
last build used and how that build went. It is written only when something in it changed, so a
no-op build reads it and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from mk.cache.fsutil import read_parsed, write_parsed
from mk.cache.local import workspace_name
from mk.engine.cache_parts import LOGS
from mk.engine.explain import identity
from mk.engine.rebuilder import Outcome

_FORMAT = 1


@dataclass(frozen=True)
class LoggedRun:
    """One action's last log: `status` says how the build that recorded it got it (executed, cached
    (local or remote), or failed)."""

    label: str
    mnemonic: str
    output: str
    status: str
    log: str  # the log blob's digest


class BuildLogs:
    """`<cache>/logs/<workspace>.msgpack`: action identity -> [status, log digest]."""

    def __init__(self, cache_root: Path, workspace_root: Path) -> None:
        self.file = cache_root / LOGS.name / f"{workspace_name(workspace_root)}.msgpack"

    def _load(self) -> dict[str, list[str]]:
        """What was recorded (a copy); an unreadable file is as good as none (it only helps `mk log`)."""
        try:
            return dict(read_parsed(self.file, _parse))
        except OSError:
            return {}

    def record(self, outcomes: Iterable[Outcome], failed: Iterable[tuple[str, str]]) -> None:
        """Remember the log of each outcome, and of each failed action (identity, log digest).

        A log already recorded keeps the status it was recorded with: an action that ran here and
        was then taken from the cache still says it ran, so no-op builds change nothing."""
        runs = self._load()
        now = {identity(o.action): [_status(o), o.result.log_digest] for o in outcomes}
        now.update({ident: ["failed", log] for ident, log in failed})
        changed = {ident: run for ident, run in now.items()
                   if runs.get(ident) != run and not _same_run(runs.get(ident), run)}
        if changed:
            runs.update(changed)
            write_parsed(self.file, msgpack.packb({"format": _FORMAT, "runs": runs}), runs)

    def of(self, label: str) -> list[LoggedRun]:
        """The recorded runs of the actions `label` owns, in a stable order."""
        found = []
        for ident, (status, log) in sorted(self._load().items()):
            owner, mnemonic, output = ident.split("|", 2)
            if owner == label:
                found.append(LoggedRun(owner, mnemonic, output, status, log))
        return found


def _parse(data: bytes) -> dict[str, list[str]]:
    try:
        loaded = msgpack.unpackb(data)
    except (ValueError, msgpack.UnpackException):
        return {}
    if not isinstance(loaded, dict) or loaded.get("format") != _FORMAT or not isinstance(loaded.get("runs"), dict):
        return {}
    return {str(k): [str(v) for v in run] for k, run in loaded["runs"].items() if isinstance(run, list)
            and len(run) == 2}


def _same_run(old: list[str] | None, new: list[str]) -> bool:
    """The same successful run's log, however this build got it."""
    return old is not None and old[1] == new[1] and "failed" not in (old[0], new[0])


def _status(outcome: Outcome) -> str:
    return "executed" if outcome.status == "executed" else f"cached ({outcome.origin})"
