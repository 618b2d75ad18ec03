"""A file pinned by sha256 (a package, a source package's file), from the first place that has those bytes.

A pinned package is a fixed output: any source serving the right bytes is as good as any other.
So the places are tried in order, cheapest and most lasting first:

1. the local store, and 2. the shared remote cache, both by sha256 (`mk.cache.fixed_outputs`);
3. the configured mirror's pool;
4. the snapshot archive (`debian_snapshot`), at the time the lockfile records;
5. the extra mirrors (`debian_extra_mirrors`).

Bytes from any of them are kept only when their size and sha256 are the lockfile's. A place that
fails, or serves other bytes, is noted and the next one is tried; when none has the package, the
error lists every place and what each answered. What was downloaded is kept in the local store
and published to the remote cache by its sha256, so the cache CI fills keeps every package any
lockfile used, long after the archive has dropped it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mk.engine.actions import ActionIO
from mk.rules.deb.download import DownloadError, download


@dataclass(frozen=True)
class Pinned:
    """What the lockfile says of one file, as the parameters of DebUnpack and DebSourceFetch carry it."""

    archive: str  # "debian" or "debian-security"
    path: str  # pool path, relative to the archive's root
    sha256: str
    size: int
    snapshot: str  # the snapshot time of its archive that the lockfile records, or ""

    @staticmethod
    def of(io: ActionIO) -> Pinned:
        return Pinned(io.string("archive"), io.string("path"), io.string("sha256"), io.integer("size"),
                      io.string("snapshot"))


def fetch(io: ActionIO) -> None:
    """An action (DebSourceFetch): the file its parameters pin, as its output."""
    fetch_to(io, io.output())


def open_pinned(io: ActionIO, name: str) -> BinaryIO:
    """The file the action's parameters pin, open for reading: where the local store keeps it, or
    else fetched into the action's scratch folder as `name`."""
    kept = io.fixed_outputs.open_from_store(Pinned.of(io).sha256)
    if kept is not None:
        return kept
    fetch_to(io, io.scratch / name)
    return open(io.scratch / name, "rb")  # (the caller closes it)


def fetch_to(io: ActionIO, out: Path) -> None:
    """The file the action's parameters pin, at `out`."""
    pinned = Pinned.of(io)
    fixed = io.fixed_outputs
    if fixed.from_store(pinned.sha256, out):
        return
    tried = ["the local store: not there"]
    unreadable = fixed.remote_state()
    if unreadable is None and fixed.from_remote(pinned.sha256, out):
        return
    tried.append(f"{fixed.remote_name}: {unreadable or 'has no copy'}")
    gone = False
    for place, url in _places(io, pinned, tried):
        try:
            download(url, out, sha256=pinned.sha256, size=pinned.size)
        except DownloadError as e:
            tried.append(f"{place}: {e}")
            gone = gone or e.not_found
            continue
        fixed.keep(pinned.sha256, out)
        return
    hint = ("\n(this version has left the mirror: a snapshot archive (debian_snapshot) or a remote cache that kept "
            "it still has it; `mk lock --update` moves to the versions the archive has now)") if gone else ""
    raise ValueError(f"{posixpath.basename(pinned.path)} (sha256 {pinned.sha256}) is in none of the places "
                     "tried:\n" + "\n".join(f"  - {line}" for line in tried) + hint)


def _places(io: ActionIO, pinned: Pinned, tried: list[str]) -> Iterator[tuple[str, str]]:
    """(place, URL) for each download to try, in order; a place with nothing configured is noted
    in `tried` instead, so the error says what could have been set."""
    archive = pinned.archive
    mirrors = io.source_urls(f"debian:{archive}")
    if not mirrors:
        tried.append(f"the mirror: none configured for the '{archive}' archive")
    for base in mirrors:
        yield "the mirror", f"{base}/{pinned.path}"
    snapshots = io.source_urls(f"debian:snapshot/{archive}")
    if not snapshots:
        tried.append("the snapshot archive: none configured (debian_snapshot, MK_DEBIAN_SNAPSHOT)")
    elif not pinned.snapshot:
        tried.append(f"the snapshot archive: the lockfile records no snapshot time for the '{archive}' archive")
    else:
        for base in snapshots:
            yield "the snapshot archive", f"{base}/{pinned.snapshot}/{pinned.path}"
    extra = io.source_urls(f"debian:extra/{archive}")
    if not extra:
        tried.append("extra mirrors: none configured (debian_extra_mirrors, MK_DEBIAN_EXTRA_MIRRORS)")
    for base in extra:
        yield "an extra mirror", f"{base}/{pinned.path}"
