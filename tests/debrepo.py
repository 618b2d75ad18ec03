"""Builds small .deb files and a signed Debian repository for offline tests.

Everything is generated in Python (ar, tar, Packages, Release) so that tests can also make
broken and malicious packages; the Release file is clear-signed with a throw-away gpg key.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import os
import shutil
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


def tar_bytes(members: list[Member], compression: str) -> bytes:
    """The same bytes for the same members, whenever made: a package published again is the same file."""
    if compression == "gz":  # (tarfile's own gzip stamps the time of day)
        return gzip.compress(tar_bytes(members, ""), mtime=0)
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
    control = tar_bytes([Member("./control", deb.control().encode()), Member("./md5sums", md5sums.encode())], "gz")
    data = tar_bytes([Member("./", kind="dir"), *members], "xz")
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, body in (("debian-binary", b"2.0\n"), ("control.tar.gz", control), ("data.tar.xz", data)):
        out.write(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode())
        out.write(body)
        if len(body) % 2:
            out.write(b"\n")
    return out.getvalue()


@dataclass
class SourcePackage:
    """A Debian source package in format 3.0 (quilt): an upstream tarball of `upstream` (path ->
    content, under NAME-UPSTREAM/), and a debian tarball whose debian/patches/series applies
    `patches` (name -> unified diff) in order."""

    name: str
    version: str = "1.0-1"
    upstream: dict[str, bytes] = field(default_factory=dict)
    patches: dict[str, str] = field(default_factory=dict)
    orig_members: list[Member] | None = None  # instead of `upstream`: members exactly as given

    @property
    def upstream_version(self) -> str:
        return self.version.rsplit("-", 1)[0]

    def files(self) -> dict[str, bytes]:
        """File name -> bytes: the .orig.tar.gz, the .debian.tar.xz and the .dsc naming both."""
        top = f"{self.name}-{self.upstream_version}"
        orig = self.orig_members if self.orig_members is not None else [
            Member(f"{top}/{path}", data) for path, data in sorted(self.upstream.items())]
        debian = [Member("debian/source/format", b"3.0 (quilt)\n"),
                  Member("debian/changelog", f"{self.name} ({self.version}) unstable; urgency=medium\n\n  * Test.\n\n"
                         " -- Test <test@example.invalid>  Thu, 01 Jan 1970 00:00:00 +0000\n".encode())]
        if self.patches:
            debian.append(Member("debian/patches/series", "".join(f"{n}\n" for n in self.patches).encode()))
            debian += [Member(f"debian/patches/{n}", text.encode()) for n, text in self.patches.items()]
        tarballs = {f"{self.name}_{self.upstream_version}.orig.tar.gz": tar_bytes(orig, "gz"),
                    f"{self.name}_{self.version}.debian.tar.xz": tar_bytes(debian, "xz")}
        dsc = "\n".join([
            "Format: 3.0 (quilt)", f"Source: {self.name}", f"Binary: {self.name}", "Architecture: any",
            f"Version: {self.version}", "Maintainer: Test <test@example.invalid>", "Checksums-Sha256:",
            *(f" {hashlib.sha256(d).hexdigest()} {len(d)} {n}" for n, d in tarballs.items()),
            "Files:", *(f" {hashlib.md5(d).hexdigest()} {len(d)} {n}" for n, d in tarballs.items()),
        ]) + "\n"
        return {f"{self.name}_{self.version}.dsc": dsc.encode(), **tarballs}

    def directory(self) -> str:
        return f"pool/main/{self.name[0]}/{self.name}"


class Repo:
    """A signed repository under `root`, as a Debian mirror lays it out. With `by_hash`, its Release
    files say `Acquire-By-Hash: yes` and each Packages file is also kept under
    `by-hash/SHA256/<sha256>` beside it, where earlier versions stay (as on a Debian mirror).
    Release files carry `date` as their Date."""

    def __init__(self, root: Path, by_hash: bool = False) -> None:
        self.root = root
        self.by_hash = by_hash
        self.date = datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC)
        self.gnupg = root.parent / f"{root.name}-gnupg"
        self.keyring = root.parent / f"{root.name}-keyring.gpg"
        self.suites: dict[str, list[Deb]] = {}
        self.sources: dict[str, list[SourcePackage]] = {}
        self._make_key()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def add(self, suite: str, *debs: Deb) -> None:
        self.suites.setdefault(suite, []).extend(debs)

    def add_source(self, suite: str, *packages: SourcePackage) -> None:
        self.sources.setdefault(suite, []).extend(packages)
        self.suites.setdefault(suite, [])

    def deb_path(self, deb: Deb) -> Path:
        return self.root / "pool/main" / deb.name[0] / deb.name / deb.filename()

    def replace(self, suite: str, *debs: Deb) -> None:
        """The suite now lists `debs` instead of what it listed (publish to make it so)."""
        self.suites[suite] = list(debs)

    def publish(self, release: bool = True) -> None:
        """The pool, the Packages files and (unless `release` is False, as on a mirror part-way
        through an update) the signed Release files that list them."""
        for suite, debs in self.suites.items():
            # As on Debian's mirrors: one Packages file per architecture, each listing the
            # `Architecture: all` packages too.
            paragraphs: dict[str, list[str]] = {arch: [] for arch in self.architectures}
            for deb in debs:
                data = build_deb(deb)
                path = self.deb_path(deb)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                for arch in self.architectures if deb.arch == "all" else [deb.arch]:
                    paragraphs[arch].append(deb.control() + f"Filename: {path.relative_to(self.root)}\n"
                                            f"Size: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n")
            for arch, listed in paragraphs.items():
                self.write_packages(suite, "\n".join(listed), arch)
            if suite in self.sources:
                self._publish_sources(suite)
            if release:
                self.write_release(suite)

    def _publish_sources(self, suite: str) -> None:
        paragraphs = []
        for package in self.sources[suite]:
            folder = self.root / package.directory()
            folder.mkdir(parents=True, exist_ok=True)
            files = package.files()
            for name, data in files.items():
                (folder / name).write_bytes(data)
            paragraphs.append("\n".join([
                f"Package: {package.name}", f"Binary: {package.name}", f"Version: {package.version}",
                "Maintainer: Test <test@example.invalid>", "Format: 3.0 (quilt)", f"Directory: {package.directory()}",
                "Files:", *(f" {hashlib.md5(d).hexdigest()} {len(d)} {n}" for n, d in files.items()),
                "Checksums-Sha256:", *(f" {hashlib.sha256(d).hexdigest()} {len(d)} {n}" for n, d in files.items()),
            ]) + "\n")
        index = self.root / "dists" / suite / "main/source"
        index.mkdir(parents=True, exist_ok=True)
        text = "\n".join(paragraphs).encode()
        (index / "Sources").write_bytes(text)
        (index / "Sources.gz").write_bytes(gzip.compress(text, mtime=0))

    def write_suite(self, suite: str, packages: str) -> None:
        self.write_packages(suite, packages)
        self.write_release(suite)

    @property
    def architectures(self) -> list[str]:
        """amd64, and every other architecture a package of the repository is built for."""
        return sorted({"amd64"} | {d.arch for debs in self.suites.values() for d in debs if d.arch != "all"})

    def write_packages(self, suite: str, packages: str, arch: str = "amd64") -> None:
        index = self.root / "dists" / suite / f"main/binary-{arch}"
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
        lines = [f"Suite: {suite}", f"Codename: {suite}", f"Date: {self.date:%a, %d %b %Y %H:%M:%S} UTC",
                 f"Architectures: {' '.join(self.architectures)}", "Components: main"]
        if self.by_hash:
            lines.append("Acquire-By-Hash: yes")
        lines.append("SHA256:")
        binaries = [f"main/binary-{arch}/{name}" for arch in self.architectures for name in ("Packages", "Packages.gz")]
        for name in (*binaries, "main/source/Sources", "main/source/Sources.gz"):
            if not (dist / name).is_file():
                continue
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
        env = {**os.environ, "GNUPGHOME": str(self.gnupg)}
        try:
            subprocess.run(["gpg", "--homedir", str(self.gnupg), "--batch", "--yes", "--pinentry-mode", "loopback",
                            "--passphrase", "", *args], check=True, capture_output=True, env=env)
        finally:
            # gpg leaves its agent running, each holding inotify instances: a whole test run's worth of
            # them reaches the per-user limit (128) and `mk watch` can no longer start.
            subprocess.run(["gpgconf", "--homedir", str(self.gnupg), "--kill", "gpg-agent"], capture_output=True,
                           env=env, check=False)


def app_repo(root: Path, by_hash: bool = False) -> Repo:
    """A published repository with one package, app 1.0, in bookworm (and an empty bookworm-security)."""
    repo = Repo(root, by_hash=by_hash)
    repo.add("bookworm", Deb("app"))
    repo.add("bookworm-security")
    repo.publish()
    return repo


def snapshot_time(date: datetime.datetime) -> str:
    return f"{date:%Y%m%dT%H%M%SZ}"


class SnapshotArchive:
    """A snapshot archive laid out as Debian's: `take` copies a repository as it is now to
    `archive/<archive>/<time>/` (a test repository holds every suite, so both archives get it),
    and `times` lists them, oldest first, as `/mr/timestamp/` answers."""

    ARCHIVES = ("debian", "debian-security")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.times: list[str] = []

    def take(self, repo: Repo, time: str) -> None:
        for archive in self.ARCHIVES:
            shutil.copytree(repo.root, self.root / "archive" / archive / time, symlinks=True)
        self.times = sorted([*self.times, time])
