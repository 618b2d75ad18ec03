"""Every image format mk offers, by name, in the order BUILD.md lists them."""

from __future__ import annotations

from mk.rules.images import bios, convert, filesystems, iso
from mk.rules.images.format import Format

FORMATS: dict[str, Format] = {f.name: f for f in (
    *filesystems.FORMATS,
    *bios.FORMATS,
    *iso.FORMATS,
    *convert.FORMATS,
)}
