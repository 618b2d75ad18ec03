"""A multi-platform OCI image: the oci-archives of one image built for several platforms, joined
under one image index whose entries name their platform (what `docker buildx` and `skopeo`
write for a multi-architecture image).

The top `index.json` holds one descriptor, of that nested index, named `NAME:TAG`, so a tool that
selects an image by name finds the whole set and then picks its platform. Blobs the archives share
(a layer of plain files, an `Architecture: all` package) are stored once.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import BinaryIO

from mk.rules.formats.oci import INDEX_TYPE, add_file, descriptor, layout_json, to_json

_BLOBS = "blobs/sha256/"


def _read_archive(path: Path) -> tuple[dict[str, object], dict[str, bytes]]:
    """The one manifest descriptor of an oci-archive mk wrote, and its blobs by sha256."""
    blobs: dict[str, bytes] = {}
    index: dict[str, object] = {}
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            data = archive.extractfile(member)
            if data is None:
                continue
            if member.name.startswith(_BLOBS):
                blobs[member.name.removeprefix(_BLOBS)] = data.read()
            elif member.name == "index.json":
                index = json.loads(data.read())
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or len(manifests) != 1:
        raise ValueError(f"{path.name}: expected an oci-archive holding one image")
    return manifests[0], blobs


def write_index_archive(images: list[tuple[Path, str, str]], out: BinaryIO, mtime: int, ref_name: str,
                        scratch: Path) -> None:
    """`images`: (oci-archive, os, architecture) of each platform, in the order the index lists them."""
    blobs: dict[str, bytes] = {}
    entries = []
    for path, os_name, arch in images:
        manifest, found = _read_archive(path)
        blobs.update(found)
        entry = descriptor(str(manifest["mediaType"]), str(manifest["digest"]).removeprefix("sha256:"),
                           int(str(manifest["size"])))
        entry["platform"] = {"architecture": arch, "os": os_name}
        entries.append(entry)
    nested = to_json({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": entries})
    nested_digest = hashlib.sha256(nested).hexdigest()
    blobs[nested_digest] = nested
    top = descriptor(INDEX_TYPE, nested_digest, len(nested))
    top["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    index = to_json({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [top]})
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for name in ("blobs", "blobs/sha256"):
            add_file(archive, name, None, mtime, scratch)
        for digest in sorted(blobs):
            add_file(archive, f"{_BLOBS}{digest}", blobs[digest], mtime, scratch)
        for name, data in (("index.json", index), ("oci-layout", layout_json())):
            add_file(archive, name, data, mtime, scratch)
