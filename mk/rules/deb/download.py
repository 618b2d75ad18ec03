"""Downloads from a Debian archive (http, https or file URLs), checked before anything is kept.

The file is written to a temporary name beside `dest`, hashed while it streams, and renamed
into place only when its size and sha256 are what the index promised. Dropped connections,
server errors and short files are retried a few times; a 404 is not, because it means the file
left the mirror, nor is a whole file that is not the one promised (larger, or another sha256),
because asking again straight away gets the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import urllib.parse
from pathlib import Path

_ATTEMPTS = 3
_CHUNK = 1 << 20


class DownloadError(Exception):
    """`not_found`: the file is not there. `mismatch`: bytes came, but not the size or sha256
    promised. `retry`: asking again may help."""

    def __init__(self, message: str, not_found: bool = False, mismatch: bool = False, retry: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found
        self.mismatch = mismatch
        self.retry = retry


def redact(url: str) -> str:
    """The URL without any user:password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password or parts.username:
        parts = parts._replace(netloc=parts.hostname or "")
    return urllib.parse.urlunsplit(parts)


def download(url: str, dest: Path, sha256: str | None = None, size: int | None = None) -> None:
    """Fetch `url` to `dest`; with `sha256`/`size`, refuse anything else. Raises DownloadError."""
    last: DownloadError | None = None
    for attempt in range(_ATTEMPTS):
        if attempt:
            time.sleep(0.2 * 2**attempt)
        tmp = dest.with_name(f".part-{os.getpid()}-{dest.name}")
        try:
            got_sha, got_size = _fetch(url, tmp)
            if size is not None and got_size != size:
                raise _size_error(redact(url), got_size, size)
            if sha256 is not None and got_sha != sha256:
                raise DownloadError(
                    f"{redact(url)}: sha256 is {got_sha}, expected {sha256}: the archive or a proxy is serving "
                    "the wrong bytes; nothing was stored", mismatch=True,
                )
            os.replace(tmp, dest)
            return
        except DownloadError as e:
            if not e.retry:
                raise
            last = e
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    assert last is not None
    raise DownloadError(f"{last} (gave up after {_ATTEMPTS} attempts)", mismatch=last.mismatch)


def _size_error(shown: str, got: int, expected: int) -> DownloadError:
    """A file shorter than promised may have been cut short on the way (worth another try); a
    longer one is whole, and not the file that was listed."""
    if got < expected:
        return DownloadError(f"{shown}: got {got} bytes, {expected - got} fewer than the {expected} expected: the "
                             "download was cut short, or the file is not the one listed", mismatch=True, retry=True)
    return DownloadError(f"{shown}: got {got} bytes, {got - expected} more than the {expected} expected: a different "
                         "file from the one listed", mismatch=True)


def _fetch(url: str, out: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    scheme = urllib.parse.urlsplit(url).scheme
    with open(out, "wb") as sink:
        if scheme == "file":
            path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
            try:
                with open(path, "rb") as source:
                    while chunk := source.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        sink.write(chunk)
            except FileNotFoundError:
                raise DownloadError(f"{url}: no such file", not_found=True) from None
        elif scheme in ("http", "https"):
            from mk.cache.cache_transport import TransportError
            from mk.cache.http import get_chunks  # only when something is downloaded

            try:
                for chunk in get_chunks(url, redact(url)):
                    digest.update(chunk)
                    size += len(chunk)
                    sink.write(chunk)
            except TransportError as e:
                raise DownloadError(str(e), not_found=e.status == 404, retry=e.status != 404) from None
        else:
            raise DownloadError(f"{redact(url)}: unsupported URL scheme '{scheme}'", not_found=True)
    return digest.hexdigest(), size
