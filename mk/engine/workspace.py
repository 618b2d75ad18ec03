"""The workspace: the folder holding `mk.toml`, and the settings in that file."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mk.engine.errors import Location, MkError, did_you_mean

MARKER = "mk.toml"
HOST_TOOLCHAIN = "host"
OUTPUT_DIR = "mk-out"


@dataclass(frozen=True)
class Setting:
    """One workspace setting: its `mk.toml` key, the environment variable that overrides it, its
    type ("string", "bool", "int" or "list of strings"), its default and its documentation. A
    setting with no key is read from the environment only (credentials never go in mk.toml).
    Rule families add their own (see `registry`); one table drives parsing and the docs."""

    key: str | None
    kind: str
    doc: str
    env: str | None = None
    default: object = None
    maximum: int | None = None  # for an int


@dataclass(frozen=True)
class Settings:
    """The engine's own settings as fields; those of rule families in `extra`, read with `get`."""

    source_date_epoch: int = 0
    cache_dir: str | None = None
    remote_cache: str | None = None
    remote_upload: bool = True  # False: the remote cache is only read
    trusted_keys: tuple[str, ...] = ()
    load_memory_mib: int = 4096
    load_seconds: int = 300
    toolchain: str | None = None  # a label, or HOST_TOOLCHAIN
    host_package_database: str = "/var/lib/dpkg/status"
    remote_upload_host_results: bool = False
    remote_executor: str | None = None  # grpc://host:port of a REAPI server (see engine.remote_exec)
    remote_instance: str = ""
    platform: str | None = None  # the target platform when the command line names none (see platforms)
    server_idle_seconds: int = 3 * 3600  # as Bazel's --max_idle_secs
    extra: Mapping[str, object] = field(default_factory=dict)

    def get(self, key: str) -> object:
        return self.extra.get(key)


ENGINE_SETTINGS = (
    # cpio (initramfs) headers hold 32 bits of time.
    Setting("source_date_epoch", "int", "The timestamp (seconds) every output carries.", default=0,
            maximum=(1 << 32) - 1),
    Setting("cache_dir", "string", "Local cache directory, relative to the workspace; default "
            "`$XDG_CACHE_HOME/mk`.", env="MK_CACHE_DIR"),
    Setting("remote_cache", "string", "The shared remote cache: a base URL (http or https), or a REAPI server's "
            "ActionCache and CAS (`grpc://host:port`, `grpcs://` for TLS).", env="MK_REMOTE_CACHE"),
    Setting("remote_upload", "bool", "`false` (or `MK_REMOTE_UPLOAD=0`) only reads the remote cache.",
            env="MK_REMOTE_UPLOAD", default=True),
    Setting("trusted_keys", "list of strings", "Public keys (`NAME:BASE64`) whose signed remote results are "
            "accepted (`MK_TRUSTED_KEYS`: comma-separated).", env="MK_TRUSTED_KEYS", default=[]),
    Setting("load_memory_mib", "int", "Memory (MiB of address space) that evaluating BUILD files may use; "
            "past it, the build stops with an error.", default=4096),
    Setting("load_seconds", "int", "Seconds that evaluating BUILD files may take; past them, the build stops "
            "with an error.", default=300),
    Setting("platform", "string", "The target platform a build is for when the command line names none "
            "(`--platform`): `linux/amd64` or `linux/arm64`; default: the host's."),
    Setting("toolchain", "string", "The tree target (such as a `deb_packages` set) that every command runs "
            "on, as the root of its sandbox: `\"//toolchains:default\"`. Or `\"host\"`: commands see the host's "
            "/usr instead (not hermetic; see `host_package_database`). A rule's `toolchain` attribute overrides it."),
    Setting("host_package_database", "string", "With `toolchain = \"host\"`: the file whose digest stands for the "
            "host's tools in every key (the dpkg database).", default="/var/lib/dpkg/status"),
    Setting("remote_upload_host_results", "bool", "Upload the results of commands run on the host's tools to "
            "the remote cache (they are kept local by default).", default=False),
    Setting("remote_executor", "string", "A Remote Execution API (REAPI v2) server that runs command actions: "
            "`grpc://host:port`, or `grpcs://host:port` for TLS (see docs/remote-execution.md).",
            env="MK_REMOTE_EXECUTOR"),
    Setting("remote_instance", "string", "The REAPI instance name of the remote executor and of a `grpc://` "
            "remote cache.", env="MK_REMOTE_INSTANCE",
            default=""),
    Setting("server_idle_seconds", "int", "Seconds the workspace's resident build server waits for a command "
            "before it exits (`mk shutdown` stops it at once).", env="MK_SERVER_IDLE_SECONDS", default=3 * 3600),
    Setting(None, "bool", "`0` runs every command in the `mk` process itself, as `--no-server` does and as CI "
            "(`CI=true`) does by default; `1` uses the build server even in CI.", env="MK_SERVER"),
    Setting(None, "string", "Bearer token for the remote executor.", env="MK_REMOTE_EXECUTOR_TOKEN"),
    Setting(None, "string", "PEM file of the TLS roots the remote executor's certificate must chain to "
            "(default: the system's).", env="MK_REMOTE_EXECUTOR_CA"),
    Setting(None, "string", "Path of the secret key that signs uploaded results (needed to upload).",
            env="MK_SIGNING_KEY"),
    Setting(None, "string", "Bearer token for the remote cache.", env="MK_REMOTE_TOKEN"),
    Setting(None, "string", "PEM file of the TLS roots a `grpcs://` remote cache's certificate must chain to "
            "(default: the system's).", env="MK_REMOTE_CACHE_CA"),
    Setting(None, "string", "Basic-auth user and password for the remote cache (or `https://user:password@host/`).",
            env="MK_REMOTE_USER, MK_REMOTE_PASSWORD"),
    Setting(None, "int", "Seconds allowed for connecting to the remote cache and for each read (default 10).",
            env="MK_REMOTE_TIMEOUT"),
)
_ENGINE_KEYS = frozenset(s.key for s in ENGINE_SETTINGS if s.key)


@dataclass(frozen=True)
class Workspace:
    root: Path
    settings: Settings

    @property
    def output_dir(self) -> Path:
        return self.root / OUTPUT_DIR


def find_workspace(start: Path, table: Sequence[Setting] = ENGINE_SETTINGS) -> Workspace:
    """The workspace holding `start`; `table` lists the settings mk.toml may hold (the engine's,
    and those of the registered rule families)."""
    start = start.resolve()
    for folder in (start, *start.parents):
        marker = folder / MARKER
        if marker.is_file():
            return Workspace(folder, _read_settings(marker, table))
    raise MkError(
        f"no workspace: neither {start} nor any parent holds {MARKER} "
        f"(create an empty {MARKER} at the root of your project)"
    )


_KINDS: dict[str, Callable[[object], bool]] = {
    "string": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}
_KIND_NAMES = {"string": "a string", "bool": "true or false", "int": "a non-negative integer",
               "list of strings": "a list of strings"}


def _toolchain(value: str | None) -> str | None:
    if value is None or value == HOST_TOOLCHAIN:
        return value
    from mk.engine.labels import Label, LabelError

    try:
        if not value.startswith("//"):
            raise LabelError("it is not an absolute label")
        Label.parse(value, "")
    except LabelError as e:
        raise MkError(f"toolchain must be \"host\" or the label of a tree target such as "
                      f"\"//toolchains:default\", got '{value}' ({e})", Location(MARKER, 1, 1)) from None
    return value


def _read_settings(path: Path, table: Sequence[Setting]) -> Settings:
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
    known = {s.key: s for s in table if s.key}
    for key, value in raw.items():
        if key not in known:
            raise MkError(f"unknown setting '{key}'{did_you_mean(key, known)}", Location(MARKER, 1, 1))
        setting = known[key]
        if not _KINDS[setting.kind](value):
            raise MkError(f"{key} must be {_KIND_NAMES[setting.kind]}", Location(MARKER, 1, 1))
        if setting.maximum is not None and isinstance(value, int) and value > setting.maximum:
            raise MkError(f"{key} must be at most {setting.maximum}, got {value}", Location(MARKER, 1, 1))
    return Settings(
        source_date_epoch=raw.get("source_date_epoch", 0),
        cache_dir=raw.get("cache_dir"),
        remote_cache=raw.get("remote_cache"),
        remote_upload=raw.get("remote_upload", True),
        trusted_keys=tuple(raw.get("trusted_keys", [])),
        load_memory_mib=raw.get("load_memory_mib", 4096),
        load_seconds=raw.get("load_seconds", 300),
        toolchain=_toolchain(raw.get("toolchain")),
        host_package_database=raw.get("host_package_database", "/var/lib/dpkg/status"),
        remote_upload_host_results=raw.get("remote_upload_host_results", False),
        remote_executor=raw.get("remote_executor"),
        remote_instance=raw.get("remote_instance", ""),
        platform=raw.get("platform"),
        server_idle_seconds=raw.get("server_idle_seconds", 3 * 3600),
        extra={k: v for k, v in raw.items() if k not in _ENGINE_KEYS},
    )
