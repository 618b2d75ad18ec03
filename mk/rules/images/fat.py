"""FAT images made without mounting: mkfs.fat makes the filesystem, mtools copies the files in.

Nothing in them comes from the clock or chance:
- the volume id is the first 8 hex digits of a sha256 of the files (mkfs.fat's `--invariant`
  must come before `-i`, which it would otherwise reset to 1234abcd);
- there is no volume label, whose directory entry mkfs.fat dates 2015-03-14 under --invariant;
- mtools dates each file SOURCE_DATE_EPOCH in UTC, but FAT's calendar starts in 1980, so an
  earlier epoch becomes 1980-01-01.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping

from mk.engine.actions import Artifact
from mk.rules.images.format import FormatContext

FAT_EPOCH = 315532800  # 1980-01-01 00:00 UTC


def fat_image(fc: FormatContext, mnemonic: str, out: Artifact, inputs: tuple[Artifact, ...],
              files: Mapping[str, str], before: str = "", after: str = "", spare_mib: int = 0) -> None:
    """Declares the action that writes the FAT16 image `out`, holding `files` (a path in the image ->
    a path in the sandbox: one of `inputs`, a toolchain file, or a file the script `before` writes
    in /tmp), then runs the script `after` on it (with `$out` set). Its size is that of the files,
    a tenth more for FAT's tables and clusters, and `spare_mib`, in whole MiB."""
    sources = " ".join(shlex.quote(source) for source in files.values())
    folders = sorted({folder for path in files for folder in _parents(path)})
    copies = "".join(f"mcopy -i \"$out\" {shlex.quote(source)} ::/{shlex.quote(path)}\n"
                     for path, source in files.items())
    fc.command(mnemonic, inputs, (out,), f"""out={out.path}
{before}sources=({sources})
volume_id=$(cat "${{sources[@]}}" | sha256sum | cut -c1-8)
bytes=0
for source in "${{sources[@]}}"; do bytes=$((bytes + $(stat -c %s "$source"))); done
mib=$(( (bytes / 1024 * 11 / 10 + 1023) / 1024 + 1 + {spare_mib} ))
mkfs.fat -C --invariant -i "$volume_id" -F 16 "$out" $((mib * 1024)) > /dev/null
{f'mmd -i "$out" {" ".join(f"::/{shlex.quote(f)}" for f in folders)}' if folders else ''}
{copies}{after}""", env={"SOURCE_DATE_EPOCH": str(max(fc.epoch, FAT_EPOCH)), "TZ": "UTC", "MTOOLS_SKIP_CHECK": "1"})


def _parents(path: str) -> list[str]:
    """The folders above `path` ("EFI/BOOT/X.EFI": EFI, EFI/BOOT), outermost first."""
    folder = posixpath.dirname(path)
    return [*_parents(folder), folder] if folder else []
