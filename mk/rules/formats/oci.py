"""An OCI image layout, packed as an `oci-archive` tarball (what `skopeo` calls oci-archive:).

Each layer is a gzip'd tar written straight from the content store, by an action of its own (see
`archive.oci_actions`); the archive copies the layers in, checking each against its sha256. JSON documents are written
with sorted keys and no whitespace, and `created` is SOURCE_DATE_EPOCH, so the digests of the
config, manifest and index depend only on the trees and the declared configuration.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mk.cache.cas import ContentStore
from mk.cache.tree import Tree
from mk.rules.formats.compression import compressed
from mk.rules.formats.tar import write_tar

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class ImageConfig:
    architecture: str = "amd64"
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    labels: tuple[tuple[str, str], ...] = field(default_factory=tuple)


class _Hashing:
    """A write-only stream that counts and sha256-hashes what passes through it."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.sink.write(data)

    def flush(self) -> None:
        self.sink.flush()


class _Checked:
    """A read-only stream that sha256-hashes what is read through it."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.sha256.update(data)
        return data


def to_json(document: object) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def descriptor(media_type: str, digest: str, size: int) -> dict[str, object]:
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": size}


def layout_json() -> bytes:
    return to_json({"imageLayoutVersion": "1.0.0"})


def add_file(archive: tarfile.TarFile, name: str, data: bytes | None, mtime: int, scratch: Path) -> None:
    """A folder (`data` None) or a file of the archive, at SOURCE_DATE_EPOCH, owned by nobody in particular."""
    if data is None:
        archive.addfile(_info(name, tarfile.DIRTYPE, 0, mtime))
        return
    scratch_file = scratch / "member"
    scratch_file.write_bytes(data)
    with open(scratch_file, "rb") as f:
        archive.addfile(_info(name, tarfile.REGTYPE, len(data), mtime), f)


@dataclass(frozen=True)
class LayerBlob:
    """A gzip'd layer as the manifest and the config name it."""

    digest: str  # sha256 of the gzip'd bytes
    size: int
    diff_id: str  # sha256 of the tar inside

    def to_json(self) -> bytes:
        return to_json({"digest": self.digest, "size": self.size, "diff_id": self.diff_id})

    @staticmethod
    def from_json(data: bytes) -> LayerBlob:
        fields = json.loads(data)
        return LayerBlob(str(fields["digest"]), int(fields["size"]), str(fields["diff_id"]))


def write_layer(tree: Tree, cas: ContentStore, out: BinaryIO, mtime: int) -> LayerBlob:
    """`tree` as a gzip'd tar layer."""
    packed = _Hashing(out)
    with compressed(packed, "gzip") as gz:  # type: ignore[arg-type]
        plain = _Hashing(gz)
        write_tar(tree, cas, plain, mtime)  # type: ignore[arg-type]
    return LayerBlob(packed.sha256.hexdigest(), packed.size, plain.sha256.hexdigest())


def write_oci_archive(
    layers: list[tuple[Path, LayerBlob]], out: BinaryIO, mtime: int, config: ImageConfig, ref_name: str,
    scratch: Path,
) -> None:
    """The archive of an image whose layers, lowest first, are already written (each a file and
    what names it)."""
    blobs = {blob.digest: path for path, blob in layers}
    layer_descriptors = [descriptor(LAYER_TYPE, blob.digest, blob.size) for _, blob in layers]
    diff_ids = [f"sha256:{blob.diff_id}" for _, blob in layers]

    created = datetime.datetime.fromtimestamp(mtime, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    image_config: dict[str, object] = {"Env": list(config.env)}
    for key, value in (("Entrypoint", config.entrypoint), ("Cmd", config.cmd)):
        if value:
            image_config[key] = list(value)
    if config.workdir:
        image_config["WorkingDir"] = config.workdir
    if config.user:
        image_config["User"] = config.user
    if config.labels:
        image_config["Labels"] = dict(config.labels)
    config_blob = to_json({
        "architecture": config.architecture,
        "os": "linux",
        "created": created,
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": "mk"} for _ in layers],
    })
    manifest_blob = to_json({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, hashlib.sha256(config_blob).hexdigest(), len(config_blob)),
        "layers": layer_descriptors,
    })
    for document in (config_blob, manifest_blob):
        path = scratch / hashlib.sha256(document).hexdigest()
        path.write_bytes(document)
        blobs[path.name] = path
    manifest = descriptor(MANIFEST_TYPE, hashlib.sha256(manifest_blob).hexdigest(), len(manifest_blob))
    manifest["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    index_blob = to_json({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [manifest]})
    layout = layout_json()

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for name in ("blobs", "blobs/sha256"):
            add_file(archive, name, None, mtime, scratch)
        for digest in sorted(blobs):
            size = blobs[digest].stat().st_size
            with open(blobs[digest], "rb") as blob:
                checked = _Checked(blob)
                archive.addfile(_info(f"blobs/sha256/{digest}", tarfile.REGTYPE, size, mtime), checked)
            if checked.sha256.hexdigest() != digest:  # a layer that is not what its record says
                raise ValueError(f"OCI blob {blobs[digest].name}: its sha256 is {checked.sha256.hexdigest()}, "
                                 f"not the {digest} recorded for it")
        for name, data in (("index.json", index_blob), ("oci-layout", layout)):
            add_file(archive, name, data, mtime, scratch)


def _info(name: str, kind: bytes, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.size = size
    info.mtime = mtime
    info.uname = info.gname = ""
    return info
