"""The archive's indices: a signed InRelease (or Release + Release.gpg) and the Packages (or
Sources) files it vouches for, read into candidates for the resolver.

A mirror updates file by file, so for a while its Packages files may already be the next ones
while its Release file still lists the last. When the Release file says `Acquire-By-Hash: yes`,
each index is fetched as apt does, from `by-hash/SHA256/<sha256>` beside it: those names never
change meaning, and old ones stay a while after an update. The plain path serves the rest: an
archive without by-hash files, or a mirror whose by-hash files lag behind.
"""

from __future__ import annotations

import bz2
import datetime
import email.utils
import gzip
import hashlib
import io
import lzma
import posixpath
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mk.cache.fsutil import mark_used
from mk.engine.errors import MkError
from mk.rules.deb.download import DownloadError, download
from mk.rules.deb.grammar import GrammarError, check_package
from mk.rules.deb.mirrors import Mirrors, archive_of

_FIELDS = ["Package", "Version", "Architecture", "Filename", "SHA256", "Size", "Source",
           "Depends", "Pre-Depends", "Provides", "Multi-Arch", "Essential"]
_COMPRESSIONS = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open, "": open}
_MID_UPDATE = ("; the mirror may be part-way through an update (its indices no longer match its Release "
               "file): run `mk lock` again in a few minutes")


@dataclass(frozen=True)
class ReleaseFiles:
    """What a verified Release file lists: path -> (sha256, size), whether by-hash paths serve them,
    and when the archive made it (its `Date`, None if it has none that parses)."""

    files: dict[str, tuple[str, int]]
    by_hash: bool
    date: datetime.datetime | None


@dataclass(frozen=True)
class Candidate:
    """One package version as an index describes it."""

    name: str
    version: str
    architecture: str
    archive: str
    suite: str
    path: str  # pool path, relative to the archive root
    sha256: str
    size: int
    source: str
    depends: str
    pre_depends: str
    provides: str
    multi_arch: str


@dataclass(frozen=True)
class Indices:
    """Every candidate the suites' indices list, and when each suite's Release file was made."""

    candidates: list[Candidate]
    released: dict[str, datetime.datetime | None]  # suite -> its Release file's Date


def read_indices(
    mirrors: Mirrors, suites: list[str], components: list[str], arch: str, keyring: Path, cache: Path
) -> Indices:
    candidates: list[Candidate] = []
    released: dict[str, datetime.datetime | None] = {}
    for archive, suite, date, index in verified_indices(mirrors, suites, components, f"binary-{arch}/Packages",
                                                        keyring, cache):
        candidates.extend(_parse(index, archive, suite))
        released[suite] = date
    return Indices(candidates, released)


def verified_indices(
    mirrors: Mirrors, suites: list[str], components: list[str], stem: str, keyring: Path, cache: Path
) -> Iterator[tuple[str, str, datetime.datetime | None, bytes]]:
    """(archive, suite, the suite's Release date, uncompressed index) of each suite's
    `<component>/<stem>` (a Packages or a Sources file), each checked against the suite's signed
    Release file."""
    cache.mkdir(parents=True, exist_ok=True)
    for suite in suites:
        archive = archive_of(suite)
        base = mirrors.base(archive)
        release = _verified_release(f"{base}/dists/{suite}", keyring, suite)
        listed = _release_files(release)
        for component in components:
            index = _fetch_index(f"{base}/dists/{suite}", f"{component}/{stem}", listed, cache, suite)
            yield archive, suite, listed.date, index


def _verified_release(dist_url: str, keyring: Path, suite: str) -> str:
    if not keyring.is_file():
        raise MkError(f"keyring {keyring} does not exist: install debian-archive-keyring or set 'keyring'")
    with tempfile.TemporaryDirectory(prefix="mk-release-") as tmp:
        inrelease = Path(tmp) / "InRelease"
        try:
            download(f"{dist_url}/InRelease", inrelease)
            command = ["gpgv", "--keyring", str(keyring), "--output", "-", str(inrelease)]
        except DownloadError as e:
            if not e.not_found:
                raise MkError(f"suite {suite}: {e}") from None
            try:
                download(f"{dist_url}/Release", Path(tmp) / "Release")
                download(f"{dist_url}/Release.gpg", Path(tmp) / "Release.gpg")
            except DownloadError as e2:
                raise MkError(f"suite {suite}: no InRelease and {e2}") from None
            command = ["gpgv", "--keyring", str(keyring), str(Path(tmp) / "Release.gpg"), str(Path(tmp) / "Release")]
        result = subprocess.run(command, capture_output=True, check=False)
        if result.returncode != 0:
            raise MkError(
                f"suite {suite}: the Release file's signature does not verify against {keyring}:\n"
                + result.stderr.decode(errors="replace").strip()
            )
        if "--output" in command:
            return result.stdout.decode()
        return (Path(tmp) / "Release").read_text(encoding="utf-8")


def _release_files(release: str) -> ReleaseFiles:
    from debian import deb822  # python-debian is slow to import: only `mk lock` needs it

    paragraph = deb822.Release(release)
    files = {entry["name"]: (entry["sha256"], int(entry["size"])) for entry in paragraph.get("SHA256", [])}
    return ReleaseFiles(files, paragraph.get("Acquire-By-Hash", "no").strip().lower() == "yes",
                        _date(paragraph.get("Date", "")))


def _date(text: str) -> datetime.datetime | None:
    """A Release file's `Date` (RFC 2822, in UTC as Debian writes it), or None."""
    try:
        date = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return date.astimezone(datetime.UTC) if date.tzinfo else date.replace(tzinfo=datetime.UTC)


def _fetch_index(dist_url: str, stem: str, listed: ReleaseFiles, cache: Path, suite: str) -> bytes:
    for suffix, opener in _COMPRESSIONS.items():
        if stem + suffix not in listed.files:
            continue
        sha256, size = listed.files[stem + suffix]
        local = cache / f"{sha256}{suffix}"
        if local.is_file() and _sha256(local) == sha256:
            mark_used(local)
        else:
            _download_index(dist_url, stem + suffix, sha256, size, local, listed.by_hash, suite)
        with opener(local, "rb") as f:  # type: ignore[operator]
            data: bytes = f.read()
            return data
    raise MkError(f"suite {suite}: the Release file lists no {stem}; check the component (and architecture)")


def _download_index(dist_url: str, name: str, sha256: str, size: int, local: Path, by_hash: bool, suite: str) -> None:
    if by_hash:
        try:
            download(f"{dist_url}/{posixpath.dirname(name)}/by-hash/SHA256/{sha256}", local, sha256=sha256, size=size)
            return
        except DownloadError as e:
            if not e.not_found:
                raise MkError(f"suite {suite}: {e}") from None
    try:
        download(f"{dist_url}/{name}", local, sha256=sha256, size=size)
    except DownloadError as e:
        raise MkError(f"suite {suite}: {e}{_MID_UPDATE if e.mismatch else ''}") from None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _parse(index: bytes, archive: str, suite: str) -> Iterator[Candidate]:
    from debian import deb822

    for p in deb822.Deb822.iter_paragraphs(io.BytesIO(index), fields=_FIELDS, use_apt_pkg=False):
        source = p.get("Source", p["Package"]).split(" ")[0]
        try:
            check_package(p["Package"], p["Version"], p["Architecture"], path=p["Filename"], source=source)
        except GrammarError as e:
            raise MkError(f"suite {suite}: {e}") from None
        yield Candidate(
            name=p["Package"], version=p["Version"], architecture=p["Architecture"], archive=archive,
            suite=suite, path=p["Filename"], sha256=p["SHA256"], size=int(p["Size"]), source=source,
            depends=p.get("Depends", ""), pre_depends=p.get("Pre-Depends", ""), provides=p.get("Provides", ""),
            multi_arch=p.get("Multi-Arch", ""),
        )
