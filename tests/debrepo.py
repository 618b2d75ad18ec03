"""Builds small .deb files and a signed Debian repository for offline tests.

Everything is generated in Python (ar, tar, Packages, Release) so that tests can also make
broken and malicious packages; the Release file is clear-signed with a throw-away gpg key.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Member:
    """A data.tar member: kind is 'file', 'dir', 'symlink' or 'hardlink'."""

    name: str
    data: bytes = b""
    kind: str = "file"
    target: str = ""
    mode: int | None = None  # default: 0755 for folders, 0644 otherwise


@dataclass
class Deb:
    name: str
    version: str = "1.0"
    arch: str = "amd64"
    depends: str = ""
    pre_depends: str = ""
    provides: str = ""
    source: str = ""
    members: list[Member] = field(default_factory=list)

    def control(self) -> str:
        lines = [f"Package: {self.name}", f"Version: {self.version}", f"Architecture: {self.arch}",
                 "Maintainer: Test <test@example.invalid>", f"Description: test package {self.name}"]
        if self.source:
            lines.insert(1, f"Source: {self.source}")
        for key, value in (("Depends", self.depends), ("Pre-Depends", self.pre_depends), ("Provides", self.provides)):
            if value:
                lines.append(f"{key}: {value}")
        return "\n".join(lines) + "\n"

    def filename(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _tar(members: list[Member], compression: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}", format=tarfile.GNU_FORMAT) as archive:  # type: ignore[call-overload]
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mode = m.mode if m.mode is not None else (0o755 if m.kind == "dir" else 0o644)
            if m.kind == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif m.kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if m.kind == "symlink" else tarfile.LNKTYPE
                info.linkname = m.target
                archive.addfile(info)
            else:
                info.size = len(m.data)
                archive.addfile(info, io.BytesIO(m.data))
    return buffer.getvalue()


def build_deb(deb: Deb) -> bytes:
    members = deb.members or [Member(f"./usr/share/doc/{deb.name}/README", f"{deb.name} {deb.version}\n".encode())]
    md5sums = "".join(f"{hashlib.md5(m.data).hexdigest()}  {m.name.removeprefix('./')}\n"
                      for m in members if m.kind == "file")
    control = _tar([Member("./control", deb.control().encode()), Member("./md5sums", md5sums.encode())], "gz")
    data = _tar([Member("./", kind="dir"), *members], "xz")
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, body in (("debian-binary", b"2.0\n"), ("control.tar.gz", control), ("data.tar.xz", data)):
        out.write(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode())
        out.write(body)
        if len(body) % 2:
            out.write(b"\n")
    return out.getvalue()


class Repo:
    """A signed repository under `root`, as a Debian mirror lays it out. With `by_hash`, its Release
    files say `Acquire-By-Hash: yes` and each Packages file is also kept under
    `by-hash/SHA256/<sha256>` beside it, where earlier versions stay (as on a Debian mirror)."""

    def __init__(self, root: Path, by_hash: bool = False) -> None:
        self.root = root
        self.by_hash = by_hash
        self.gnupg = root.parent / f"{root.name}-gnupg"
        self.keyring = root.parent / f"{root.name}-keyring.gpg"
        self.suites: dict[str, list[Deb]] = {}
        self._make_key()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def add(self, suite: str, *debs: Deb) -> None:
        self.suites.setdefault(suite, []).extend(debs)

    def deb_path(self, deb: Deb) -> Path:
        return self.root / "pool/main" / deb.name[0] / deb.name / deb.filename()

    def publish(self, release: bool = True) -> None:
        """The pool, the Packages files and (unless `release` is False, as on a mirror part-way
        through an update) the signed Release files that list them."""
        for suite, debs in self.suites.items():
            paragraphs = []
            for deb in debs:
                data = build_deb(deb)
                path = self.deb_path(deb)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                paragraphs.append(deb.control() + f"Filename: {path.relative_to(self.root)}\nSize: {len(data)}\n"
                                  f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
            self.write_packages(suite, "\n".join(paragraphs))
            if release:
                self.write_release(suite)

    def write_suite(self, suite: str, packages: str) -> None:
        self.write_packages(suite, packages)
        self.write_release(suite)

    def write_packages(self, suite: str, packages: str) -> None:
        index = self.root / "dists" / suite / "main/binary-amd64"
        index.mkdir(parents=True, exist_ok=True)
        text = packages.encode()
        for name, data in (("Packages", text), ("Packages.gz", gzip.compress(text, mtime=0))):
            (index / name).write_bytes(data)
            if self.by_hash:
                (index / "by-hash/SHA256").mkdir(parents=True, exist_ok=True)
                (index / "by-hash/SHA256" / hashlib.sha256(data).hexdigest()).write_bytes(data)

    def write_release(self, suite: str) -> None:
        """A signed Release listing the suite's Packages files as they are now."""
        dist = self.root / "dists" / suite
        lines = [f"Suite: {suite}", f"Codename: {suite}", "Architectures: amd64", "Components: main"]
        if self.by_hash:
            lines.append("Acquire-By-Hash: yes")
        lines.append("SHA256:")
        for name in ("main/binary-amd64/Packages", "main/binary-amd64/Packages.gz"):
            data = (dist / name).read_bytes()
            lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
        (dist / "Release").write_text("\n".join(lines) + "\n")
        (dist / "InRelease").unlink(missing_ok=True)
        self._gpg("--clearsign", "--output", str(dist / "InRelease"), str(dist / "Release"))

    def _make_key(self) -> None:
        self.gnupg.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._gpg("--quick-generate-key", "mk test archive <archive@example.invalid>", "ed25519", "sign", "never")
        with open(self.keyring, "wb") as out:
            subprocess.run(["gpg", "--homedir", str(self.gnupg), "--export"], stdout=out, check=True,
                           stderr=subprocess.DEVNULL)

    def _gpg(self, *args: str) -> None:
        subprocess.run(["gpg", "--homedir", str(self.gnupg), "--batch", "--yes", "--pinentry-mode", "loopback",
                        "--passphrase", "", *args], check=True, capture_output=True,
                       env={**os.environ, "GNUPGHOME": str(self.gnupg)})


def app_repo(root: Path, by_hash: bool = False) -> Repo:
    """A published repository with one package, app 1.0, in bookworm (and an empty bookworm-security)."""
    repo = Repo(root, by_hash=by_hash)
    repo.add("bookworm", Deb("app"))
    repo.add("bookworm-security")
    repo.publish()
    return repo
