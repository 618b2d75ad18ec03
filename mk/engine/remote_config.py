"""Which remote cache and remote executor a build uses, and how: the workspace settings, overridden by the environment.

| Variable | Setting | Meaning |
|---|---|---|
| MK_REMOTE_CACHE | remote_cache | base URL (http, https), or a REAPI server (grpc://host:port, grpcs://); empty: none |
| MK_REMOTE_INSTANCE | remote_instance | a REAPI server's instance name (the remote executor's too) |
| MK_REMOTE_CACHE_CA | - | PEM file of the TLS roots a grpcs:// remote cache's certificate chains to |
| MK_REMOTE_UPLOAD | remote_upload | `0` makes the remote read-only (`mk build --no-remote-upload` too) |
| MK_SIGNING_KEY | - | path of the secret key that signs uploaded results (needed to upload) |
| MK_TRUSTED_KEYS | trusted_keys | public keys (`NAME:BASE64`) whose signed results are accepted |
| MK_REMOTE_TOKEN | - | bearer token (HTTP or gRPC) |
| MK_REMOTE_USER, MK_REMOTE_PASSWORD | - | basic auth (or `https://user:password@host/` in the URL) |
| MK_REMOTE_TIMEOUT | - | seconds allowed for connecting and for each read (default 10) |

Credentials come only from the environment (or the URL), never from mk.toml, which is committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from mk.cache.reapi.endpoint import Endpoint, EndpointError
from mk.cache.remote import RemoteConfig
from mk.cache.signing import SigningKeyError, load_secret_key, parse_public_keys
from mk.engine.errors import MkError
from mk.engine.workspace import Settings

_FALSE = {"0", "false", "no", "off"}
_TRUE = {"1", "true", "yes", "on"}


def resolve(settings: Settings, env: Mapping[str, str], upload: bool | None = None) -> RemoteConfig | None:
    """The remote cache configuration, or None when no remote is configured.

    `upload` is the command-line choice (None: not given).
    """
    raw_url = env.get("MK_REMOTE_CACHE", settings.remote_cache or "").strip()
    if not raw_url:
        return None
    endpoint = None
    if raw_url.startswith(("grpc://", "grpcs://")):
        endpoint = _cache_endpoint(raw_url, settings, env)
        url, basic_auth = endpoint.url, None
    else:
        url, basic_auth = _split_credentials(raw_url)
    if upload is None:
        upload = _flag(env["MK_REMOTE_UPLOAD"], "MK_REMOTE_UPLOAD") if "MK_REMOTE_UPLOAD" in env \
            else settings.remote_upload
    signing_key = None
    if key_path := env.get("MK_SIGNING_KEY", "").strip():
        try:
            signing_key = load_secret_key(Path(key_path))
        except SigningKeyError as e:
            raise MkError(f"MK_SIGNING_KEY: {e}") from None
    trusted = env["MK_TRUSTED_KEYS"].split(",") if "MK_TRUSTED_KEYS" in env else list(settings.trusted_keys)
    try:
        trusted_keys = parse_public_keys(trusted)
    except SigningKeyError as e:
        where = "MK_TRUSTED_KEYS" if "MK_TRUSTED_KEYS" in env else "trusted_keys in mk.toml"
        raise MkError(f"{where}: {e}") from None
    if user := env.get("MK_REMOTE_USER"):
        basic_auth = (user, env.get("MK_REMOTE_PASSWORD", ""))
    timeout = env.get("MK_REMOTE_TIMEOUT", "10")
    try:
        seconds = float(timeout)
    except ValueError:
        seconds = -1
    if not 0 < seconds <= 3600:
        raise MkError(f"MK_REMOTE_TIMEOUT must be a number of seconds, got '{timeout}'")
    return RemoteConfig(
        url=url,
        endpoint=endpoint,
        upload=upload,
        token=env.get("MK_REMOTE_TOKEN") or None,
        basic_auth=basic_auth,
        signing_key=signing_key,
        trusted_keys=trusted_keys,
        timeout=seconds,
    )


def _cache_endpoint(url: str, settings: Settings, env: Mapping[str, str]) -> Endpoint:
    """A REAPI server as the remote cache: its instance is the remote executor's (one cluster
    serves both), its token MK_REMOTE_TOKEN, its TLS roots MK_REMOTE_CACHE_CA."""
    try:
        return Endpoint.parse(url, env.get("MK_REMOTE_INSTANCE", settings.remote_instance or ""),
                              env.get("MK_REMOTE_TOKEN") or None, env.get("MK_REMOTE_CACHE_CA") or None,
                              role="remote cache")
    except EndpointError as e:
        where = "MK_REMOTE_CACHE" if "MK_REMOTE_CACHE" in env else "remote_cache in mk.toml"
        raise MkError(f"{where}: {e}") from None


def _flag(value: str, name: str) -> bool:
    if value.strip().lower() in _FALSE:
        return False
    if value.strip().lower() in _TRUE:
        return True
    raise MkError(f"{name} must be 0 or 1, got '{value}'")


def _split_credentials(raw: str) -> tuple[str, tuple[str, str] | None]:
    """('https://u:p@host/x/', ...) -> ('https://host/x', ('u', 'p')); the URL is checked."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = raw if "@" not in raw else "(an URL with credentials)"
        raise MkError(f"the remote cache must be an http://, https://, grpc:// or grpcs:// URL, got '{shown}'")
    if parts.query or parts.fragment:
        raise MkError("the remote cache URL may not have a query or a fragment")
    basic_auth = None
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        basic_auth = (unquote(user), unquote(password))
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), basic_auth


@dataclass(frozen=True)
class ExecutorConfig:
    """A remote executor (see engine.remote_exec): where, and how a build uses it."""

    endpoint: Endpoint
    timeout: float = 60.0  # seconds for each call but Execute (which lasts as long as its action)
    jobs: int = 64  # remote actions in flight, on top of -j local ones
    fallback: bool = False  # run here what the executor cannot (unreachable, refusing)


def resolve_executor(settings: Settings, env: Mapping[str, str], jobs: int | None = None,
                     fallback: bool = False) -> ExecutorConfig | None:
    """The remote executor, or None when none is configured.

    | Variable | Setting | Meaning |
    |---|---|---|
    | MK_REMOTE_EXECUTOR | remote_executor | grpc://host:port or grpcs://host:port (TLS); empty: none |
    | MK_REMOTE_INSTANCE | remote_instance | the REAPI instance name (default empty) |
    | MK_REMOTE_EXECUTOR_TOKEN | - | bearer token sent with every call |
    | MK_REMOTE_EXECUTOR_CA | - | PEM file of the TLS roots to trust (default: the system's) |
    """
    url = env.get("MK_REMOTE_EXECUTOR", settings.remote_executor or "").strip()
    if not url:
        return None
    instance = env.get("MK_REMOTE_INSTANCE", settings.remote_instance or "")
    try:
        endpoint = Endpoint.parse(url, instance, env.get("MK_REMOTE_EXECUTOR_TOKEN") or None,
                                  env.get("MK_REMOTE_EXECUTOR_CA") or None)
    except EndpointError as e:
        where = "MK_REMOTE_EXECUTOR" if "MK_REMOTE_EXECUTOR" in env else "remote_executor in mk.toml"
        raise MkError(f"{where}: {e}") from None
    return ExecutorConfig(endpoint, jobs=jobs if jobs is not None else 64, fallback=fallback)
