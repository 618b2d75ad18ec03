"""The dpkg database of an image, so `dpkg -l` and vulnerability scanners see the packages."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind


@dataclass(frozen=True)
class InstalledPackage:
    name: str
    control: str
    md5sums: str
    conffiles: str
    paths: tuple[str, ...]


def status_paragraph(control: str) -> str:
    """The control paragraph with `Status: install ok installed` after `Package:`, as dpkg writes it."""
    lines = [line for line in control.strip("\n").splitlines() if line.strip()]
    out = []
    for line in lines:
        out.append(line)
        if line.startswith("Package:"):
            out.append("Status: install ok installed")
    return "\n".join(out) + "\n"


def database(packages: Iterable[InstalledPackage], cas: ContentStore) -> list[Entry]:
    """var/lib/dpkg/status plus each package's .list, .md5sums and .conffiles, sorted by name."""
    ordered = sorted(packages, key=lambda p: p.name)
    files = {"var/lib/dpkg/status": "\n".join(status_paragraph(p.control) for p in ordered)}
    for p in ordered:
        files[f"var/lib/dpkg/info/{p.name}.list"] = "/.\n" + "".join(f"/{path}\n" for path in p.paths)
        if p.md5sums:
            files[f"var/lib/dpkg/info/{p.name}.md5sums"] = p.md5sums
        if p.conffiles:
            files[f"var/lib/dpkg/info/{p.name}.conffiles"] = p.conffiles
    files["var/lib/dpkg/available"] = ""
    entries = []
    for path, text in files.items():
        data = text.encode()
        entries.append(Entry(path, Kind.FILE, 0o644, digest=cas.put_bytes(data), size=len(data)))
    return entries
