"""The workspace: the folder holding `mk.toml`, and the settings in that file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mk.engine.errors import Location, MkError, did_you_mean

MARKER = "mk.toml"
OUTPUT_DIR = "mk-out"


@dataclass(frozen=True)
class Settings:
    source_date_epoch: int = 0
    cache_dir: str | None = None
    remote_cache: str | None = None
    remote_upload: bool = True  # False: the remote cache is only read
    trusted_keys: tuple[str, ...] = ()
    debian_mirror: str | None = None
    debian_security_mirror: str | None = None


_KNOWN = {
    "source_date_epoch", "cache_dir", "remote_cache", "remote_upload", "trusted_keys", "debian_mirror",
    "debian_security_mirror",
}


@dataclass(frozen=True)
class Workspace:
    root: Path
    settings: Settings

    @property
    def output_dir(self) -> Path:
        return self.root / OUTPUT_DIR

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))


def find_workspace(start: Path) -> Workspace:
    start = start.resolve()
    for folder in (start, *start.parents):
        marker = folder / MARKER
        if marker.is_file():
            return Workspace(folder, _read_settings(marker))
    raise MkError(
        f"no workspace: neither {start} nor any parent holds {MARKER} "
        f"(create an empty {MARKER} at the root of your project)"
    )


def _read_settings(path: Path) -> Settings:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return Settings()  # the common empty marker: no need to load the TOML parser
    import tomllib

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = getattr(e, "lineno", 1)
        col = getattr(e, "colno", 1)
        raise MkError(f"invalid TOML: {e}", Location(MARKER, line, col)) from None
    for key in raw:
        if key not in _KNOWN:
            raise MkError(
                f"unknown setting '{key}'{did_you_mean(key, _KNOWN)}", Location(MARKER, 1, 1)
            )
    epoch = raw.get("source_date_epoch", 0)
    if not isinstance(epoch, int) or epoch < 0:
        raise MkError("source_date_epoch must be a non-negative integer", Location(MARKER, 1, 1))
    keys = raw.get("trusted_keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise MkError("trusted_keys must be a list of strings", Location(MARKER, 1, 1))
    remote_upload = raw.get("remote_upload", True)
    if not isinstance(remote_upload, bool):
        raise MkError("remote_upload must be true or false", Location(MARKER, 1, 1))
    return Settings(
        source_date_epoch=epoch,
        cache_dir=_opt_str(raw, "cache_dir"),
        remote_cache=_opt_str(raw, "remote_cache"),
        remote_upload=remote_upload,
        trusted_keys=tuple(keys),
        debian_mirror=_opt_str(raw, "debian_mirror"),
        debian_security_mirror=_opt_str(raw, "debian_security_mirror"),
    )


def _opt_str(raw: dict[str, object], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise MkError(f"{key} must be a string", Location(MARKER, 1, 1))
    return value
