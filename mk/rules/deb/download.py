"""Downloads from a Debian archive (http, https or file URLs), checked before anything is kept.

The file is written to a temporary name beside `dest`, hashed while it streams, and renamed
into place only when its size and sha256 are what the index promised. Dropped connections and
server errors are retried a few times; a 404 is not, because it means the file left the mirror.
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
    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


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
                raise DownloadError(f"{redact(url)}: got {got_size} bytes, expected {size} (truncated download)")
            if sha256 is not None and got_sha != sha256:
                raise DownloadError(
                    f"{redact(url)}: sha256 is {got_sha}, expected {sha256}: the archive or a proxy is serving "
                    "the wrong bytes; nothing was stored"
                )
            os.replace(tmp, dest)
            return
        except DownloadError as e:
            if e.not_found or "sha256 is" in str(e):
                raise
            last = e
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    assert last is not None
    raise DownloadError(f"{last} (gave up after {_ATTEMPTS} attempts)")


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
            from mk.cache.http import TransportError, get_chunks  # only when something is downloaded

            try:
                for chunk in get_chunks(url, redact(url)):
                    digest.update(chunk)
                    size += len(chunk)
                    sink.write(chunk)
            except TransportError as e:
                raise DownloadError(str(e), not_found=e.status == 404) from None
        else:
            raise DownloadError(f"{redact(url)}: unsupported URL scheme '{scheme}'", not_found=True)
    return digest.hexdigest(), size
