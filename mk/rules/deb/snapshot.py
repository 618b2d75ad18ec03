"""Which snapshot of each archive holds what `mk lock` resolved, so the lockfile can say.

When the mirror is itself a snapshot (`.../archive/debian/TIME`), its time is the answer. Else,
with a snapshot archive configured (`debian_snapshot`), it is the archive's first snapshot taken
at or after the newest Release file the lock read from it: that snapshot saw the archive as the
lock did, since the archive changes only every few hours and drops a superseded package days
later still. The snapshot archive's times are read from `BASE/mr/timestamp/?archive=ARCHIVE`
(`{"result": {"debian": ["20240601T000000Z", ...]}}`, oldest first).

A time is only where to look: what comes from there is used only when its sha256 is the
lockfile's. So anything that stops mk from telling (no snapshot archive, one that cannot be
reached or answers nonsense, a state newer than its last snapshot) leaves that archive without
a time and says why, and the lock goes on.
"""

from __future__ import annotations

import datetime
import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mk.rules.deb.download import DownloadError, download
from mk.rules.deb.mirrors import SNAPSHOT_TIME, Mirrors, snapshot_time

_MOST_TIMES_BYTES = 64 << 20  # the list of every snapshot of an archive since 2005 is a few MB


@dataclass(frozen=True)
class SnapshotTimes:
    times: dict[str, str]  # archive -> snapshot time
    notes: tuple[str, ...]  # why an archive has none, for the person running `mk lock`


def snapshot_times(mirrors: Mirrors, released: dict[str, datetime.datetime | None],
                   archives: Iterable[tuple[str, str]]) -> SnapshotTimes:
    """`released`: suite -> its Release file's date; `archives`: (suite, archive) for each suite read."""
    dates: dict[str, list[datetime.datetime | None]] = {}
    for suite, archive in archives:
        dates.setdefault(archive, []).append(released.get(suite))
    times: dict[str, str] = {}
    notes: list[str] = []
    for archive, listed in sorted(dates.items()):
        known = [d for d in listed if d is not None]
        date = max(known) if known and len(known) == len(listed) else None
        own = snapshot_time(mirrors.base(archive))
        if own is not None:
            times[archive] = own
            continue
        if mirrors.snapshot is None:
            continue  # nothing was asked for: nothing to say
        if date is None:
            notes.append(f"the '{archive}' archive's Release files carry no Date, so no snapshot time is recorded")
            continue
        try:
            found = _first_at_or_after(mirrors.snapshot, archive, date)
        except (DownloadError, ValueError) as e:
            notes.append(f"no snapshot time for the '{archive}' archive: {e}")
            continue
        if found is None:
            notes.append(f"no snapshot of the '{archive}' archive holds what was resolved yet (it was published at "
                         f"{date:%Y-%m-%d %H:%M} UTC); `mk lock` records one when run again later")
            continue
        times[archive] = found
    return SnapshotTimes(times, tuple(notes))


def _first_at_or_after(base: str, archive: str, date: datetime.datetime) -> str | None:
    url = f"{base.rstrip('/')}/mr/timestamp/?archive={archive}"
    with tempfile.TemporaryDirectory(prefix="mk-snapshot-") as tmp:
        answer = Path(tmp) / "times.json"
        download(url, answer)
        if answer.stat().st_size > _MOST_TIMES_BYTES:
            raise ValueError(f"{url}: the answer is larger than {_MOST_TIMES_BYTES >> 20} MB")
        try:
            listed = json.loads(answer.read_bytes())["result"][archive]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{url}: not a list of snapshot times ({type(e).__name__}: {e})") from None
    if not isinstance(listed, list) or not all(isinstance(t, str) and SNAPSHOT_TIME.fullmatch(t) for t in listed):
        raise ValueError(f"{url}: not a list of snapshot times of the form 20240601T000000Z")
    wanted = f"{date:%Y%m%dT%H%M%SZ}"
    return min((t for t in listed if t >= wanted), default=None)
