"""`mk build --check`: rebuild ignoring the cache and compare bytes, like `nix build --check`."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mk.cache.cas import ContentStore, CorruptBlobError, MissingBlobError
from mk.engine.scheduler import ScheduleResult

_REPORT_LIMIT = 20_000


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
    tool = shutil.which("diffoscope")
    if tool is None or not mismatch.reference:
        return None
    name = Path(mismatch.path).name
    files = []
    for which, digest in (("reference", mismatch.reference), ("rebuilt", mismatch.rebuilt)):
        folder = scratch / which
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(folder / name, "wb") as out:
                cas.copy_to(digest, out)
        except (MissingBlobError, CorruptBlobError):
            return None  # e.g. a remote hit whose bytes were never downloaded
        files.append(str(folder / name))
    result = subprocess.run([tool, "--text", "-", *files], capture_output=True, text=True, check=False)
    return result.stdout[:_REPORT_LIMIT]
