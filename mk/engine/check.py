"""`mk build --check`: rebuild ignoring the cache and compare bytes, like `nix build --check`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mk.cache import diffoscope as blob_diff
from mk.cache.cas import ContentStore
from mk.engine.scheduler import ScheduleResult


@dataclass(frozen=True)
class Mismatch:
    label: str
    path: str
    reference: str
    rebuilt: str


def compare(reference: ScheduleResult, rebuilt: ScheduleResult) -> list[Mismatch]:
    """Outputs whose bytes differ between the cached (reference) build and the forced rebuild."""
    before = {o.path: (str(out.action.owner), o.digest) for out in reference.outcomes for o in out.result.outputs}
    mismatches = []
    for outcome in rebuilt.outcomes:
        for output in outcome.result.outputs:
            label, digest = before.get(output.path, (str(outcome.action.owner), ""))
            if digest != output.digest:
                mismatches.append(Mismatch(label, output.path, digest, output.digest))
    return sorted(mismatches, key=lambda m: m.path)


def diffoscope(cas: ContentStore, mismatch: Mismatch, scratch: Path) -> str | None:
    """diffoscope's text report on the two versions, when diffoscope is installed."""
    if not mismatch.reference:
        return None
    return blob_diff.compare(cas, mismatch.reference, mismatch.rebuilt, Path(mismatch.path).name, scratch,
                             ("reference", "rebuilt"))
