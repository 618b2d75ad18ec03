"""diffoscope's report on two versions of a file in the content store, when it is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from mk.cache.cas import ContentStore, CorruptBlobError, MissingBlobError

_REPORT_LIMIT = 20_000
INSTALL_HINT = "on Debian: apt-get install diffoscope"


def installed() -> bool:
    return shutil.which("diffoscope") is not None


def compare(cas: ContentStore, before: str, after: str, name: str, scratch: Path,
            sides: tuple[str, str] = ("a", "b")) -> str | None:
    """The text report on blobs `before` and `after`, written out as `<side>/<name>` in `scratch`
    (so the report names them so); None without diffoscope, or when a blob cannot be read."""
    tool = shutil.which("diffoscope")
    if tool is None:
        return None
    files = []
    for side, digest in zip(sides, (before, after), strict=True):
        file = scratch / side / name
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(file, "wb") as out:
                cas.copy_to(digest, out)
        except (MissingBlobError, CorruptBlobError):
            return None  # e.g. a remote hit whose bytes were never downloaded
        files.append(f"{side}/{name}")
    result = subprocess.run([tool, "--text", "-", *files], cwd=scratch, capture_output=True, text=True, check=False)
    return result.stdout[:_REPORT_LIMIT]
