"""Where the Debian archives are: MK_DEBIAN_MIRROR, then mk.toml, then the host's apt sources.

Two archives matter: "debian" (suites such as bookworm and bookworm-updates) and
"debian-security" (bookworm-security), which usually live under different bases. No base URL
is ever written into a lockfile or an action key: entries name the archive, and the base is
looked up when something is downloaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mk.engine.errors import MkError

MAIN, SECURITY = "debian", "debian-security"
APT_SOURCES = Path("/etc/apt")


def archive_of(suite: str) -> str:
    return SECURITY if suite.endswith("-security") else MAIN


@dataclass(frozen=True)
class Mirrors:
    main: str | None
    security: str | None

    def base(self, archive: str) -> str:
        base = self.security if archive == SECURITY else self.main
        if base is None:
            raise MkError(
                f"no mirror for the '{archive}' archive: set MK_DEBIAN_MIRROR (and MK_DEBIAN_SECURITY_MIRROR), "
                "debian_mirror in mk.toml, or an apt source on this machine"
            )
        return base.rstrip("/")


def find_mirrors(setting_main: str | None, setting_security: str | None, apt_dir: Path = APT_SOURCES) -> Mirrors:
    env_main = os.environ.get("MK_DEBIAN_MIRROR")
    env_security = os.environ.get("MK_DEBIAN_SECURITY_MIRROR")
    main = env_main or setting_main
    security = env_security or setting_security
    if main and not security:
        security = _security_beside(main)
    if main is None or security is None:
        apt = apt_sources(apt_dir)
        main = main or apt.get(MAIN)
        security = security or apt.get(SECURITY) or (_security_beside(main) if main else None)
    return Mirrors(main, security)


def _security_beside(main: str) -> str:
    """A Debian mirror's security archive sits beside it (…/debian -> …/debian-security); any
    other base (a local repository, say) is taken to hold every suite itself."""
    stripped = main.rstrip("/")
    return stripped + "-security" if stripped.endswith("/debian") else stripped


def apt_sources(apt_dir: Path) -> dict[str, str]:
    """archive -> base URL, from deb822 `.sources` files and one-line `sources.list` entries."""
    found: dict[str, str] = {}
    files = sorted((apt_dir / "sources.list.d").glob("*.sources")) if (apt_dir / "sources.list.d").is_dir() else []
    for file in files:
        for stanza in re.split(r"\n\s*\n", file.read_text(encoding="utf-8", errors="replace")):
            fields = _stanza(stanza)
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split()[:1]:
                for suite in fields.get("suites", "").split():
                    found.setdefault(archive_of(suite), uri)
    for file in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if not file.is_file():
            continue
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                found.setdefault(archive_of(words[2]), words[1])
    return found


def _stanza(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields
