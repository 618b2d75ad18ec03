"""Debian's grammar for the names, versions, architectures and archive paths mk reads from
lockfiles, Packages indices and control files (Debian policy 5.6.1, 5.6.12, 5.6.8).

Each of them ends up in a file name or a URL (`<name>_<version>_<arch>.deb`, `<mirror>/<path>`),
so anything else, `../../tmp/x` or a NUL byte, is refused before it gets there.
"""

from __future__ import annotations

import re

from mk.cache.tree import shown

_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# [epoch:]upstream[-revision]: the upstream version starts with a digit and may hold hyphens only
# when a revision follows the last one.
_VERSION = re.compile(r"(?:[0-9]+:)?(?:[0-9][A-Za-z0-9.+~-]*-[A-Za-z0-9.+~]+|[0-9][A-Za-z0-9.+~]*)")
_ARCHITECTURE = re.compile(r"[a-z0-9][a-z0-9-]*")
_PATH_PART = re.compile(r"[A-Za-z0-9+_.~-]+")


class GrammarError(ValueError):
    pass


def check_package(name: str, version: str, architecture: str, path: str | None = None,
                  source: str | None = None) -> None:
    """Raises GrammarError, naming the package, for any field outside Debian's grammar."""
    if not _NAME.fullmatch(name):
        raise GrammarError(f"package '{shown(name)}': not a valid Debian package name")
    for field, value, pattern in (("version", version, _VERSION), ("architecture", architecture, _ARCHITECTURE),
                                  ("source", source, _NAME)):
        if value is not None and not pattern.fullmatch(value):
            raise GrammarError(f"package '{name}': {field} '{shown(value)}' is not a valid Debian {field}")
    if path is not None and not all(_PATH_PART.fullmatch(p) and p not in (".", "..") for p in path.split("/")):
        raise GrammarError(f"package '{name}': path '{shown(path)}' is not a relative path inside the archive")
