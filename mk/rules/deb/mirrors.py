"""Where the Debian archives are: MK_DEBIAN_MIRROR, then mk.toml, then the host's apt sources;
and where else a pinned package may be had: a snapshot archive and extra mirrors.

Two archives matter: "debian" (suites such as bookworm and bookworm-updates) and
"debian-security" (bookworm-security), which usually live under different bases. No base URL
is ever written into a lockfile or an action key: entries name the archive, and the base is
looked up when something is downloaded.

A snapshot archive (`debian_snapshot`) is laid out as Debian's own snapshot service is: the archive as it
was at a time under `<base>/archive/<archive>/<YYYYMMDDTHHMMSSZ>/`, and the times it has under
`<base>/mr/timestamp/`. A mirror URL of that form is itself a snapshot: its time is known.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mk.engine.errors import MkError
from mk.engine.workspace import Settings

MAIN, SECURITY = "debian", "debian-security"
APT_SOURCES = Path("/etc/apt")
SNAPSHOT_TIME = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_SNAPSHOT_URL = re.compile(rf"(?P<base>.*)/archive/(?P<archive>{MAIN}|{SECURITY})/(?P<time>{SNAPSHOT_TIME.pattern})/*")


def archive_of(suite: str) -> str:
    return SECURITY if suite.endswith("-security") else MAIN


def snapshot_time(base: str) -> str | None:
    """The time of a snapshot archive's URL (`.../archive/debian/20240601T000000Z`), else None."""
    match = _SNAPSHOT_URL.fullmatch(base)
    return match["time"] if match else None


@dataclass(frozen=True)
class Mirrors:
    main: str | None
    security: str | None
    snapshot: str | None = None  # a snapshot archive's base URL (see the module's docstring)
    extra: tuple[str, ...] = ()  # further mirrors of the main archive, tried last

    def base(self, archive: str) -> str:
        base = self.security if archive == SECURITY else self.main
        if base is None:
            raise MkError(
                f"no mirror for the '{archive}' archive: set MK_DEBIAN_MIRROR (and MK_DEBIAN_SECURITY_MIRROR), "
                "debian_mirror in mk.toml, or an apt source on this machine"
            )
        return base.rstrip("/")

    def urls(self, name: str) -> tuple[str, ...]:
        """The "debian" download source: `ARCHIVE` is the configured mirror of that archive,
        `snapshot/ARCHIVE` the snapshot archive's folder of it (a time goes after), and
        `extra/ARCHIVE` the extra mirrors' bases for it. Empty when none is configured."""
        kind, _, archive = name.rpartition("/")
        if archive not in (MAIN, SECURITY):
            raise MkError(f"no Debian archive '{archive}'")
        if kind == "snapshot":
            return (f"{self.snapshot.rstrip('/')}/archive/{archive}",) if self.snapshot else ()
        if kind == "extra":
            return tuple(_security_beside(e) if archive == SECURITY else e.rstrip("/") for e in self.extra)
        base = self.security if archive == SECURITY else self.main
        return (base.rstrip("/"),) if base else ()


def mirrors_from(settings: Settings) -> Mirrors:
    """Every place the settings (and the environment, and this machine's apt sources) name."""
    def text(key: str) -> str | None:
        value = settings.get(key)
        return None if value is None else str(value)

    found = find_mirrors(text("debian_mirror"), text("debian_security_mirror"))
    extra_env = os.environ.get("MK_DEBIAN_EXTRA_MIRRORS")
    extra_setting = settings.get("debian_extra_mirrors")
    extra = extra_env.replace(",", " ").split() if extra_env is not None else \
        [str(e) for e in extra_setting] if isinstance(extra_setting, list) else []
    snapshot = os.environ.get("MK_DEBIAN_SNAPSHOT", text("debian_snapshot") or "") or None
    return Mirrors(found.main, found.security, snapshot, tuple(extra))


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
    """A Debian mirror's security archive sits beside it (…/debian -> …/debian-security, and so in
    a snapshot archive: …/archive/debian/TIME -> …/archive/debian-security/TIME); any other base
    (a local repository, say) is taken to hold every suite itself."""
    stripped = main.rstrip("/")
    snapshot = _SNAPSHOT_URL.fullmatch(stripped)
    if snapshot and snapshot["archive"] == MAIN:
        return f"{snapshot['base']}/archive/{SECURITY}/{snapshot['time']}"
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
