"""Unit tests of the remote cache's parts: signatures, the embedded server, settings, redaction."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
import zstandard
from remote_servers import http_request

from mk.cache.action_cache import ActionResult, OutputFile
from mk.cache.cas import digest_bytes
from mk.cache.remote import RemoteConfig
from mk.cache.server import CacheServer, ServerOptions, make_server
from mk.cache.signing import (
    SigningKeyError,
    UntrustedResultError,
    generate,
    load_secret_key,
    parse_public_key,
    sign,
    verify,
    write_key_pair,
)
from mk.engine.errors import MkError
from mk.engine.remote_config import resolve
from mk.engine.workspace import Settings

KEY = "a" * 64
OTHER_KEY = "b" * 64
RESULT = ActionResult((OutputFile("pkg/out.txt", "c" * 64, False),), 0, "d" * 64)


# ---- signatures ---------------------------------------------------------------------------------


def test_a_signed_result_verifies_for_its_own_key_only() -> None:
    secret = generate("ci")
    envelope = sign(secret, KEY, RESULT)
    assert verify(envelope, KEY, [secret.public()]) == RESULT
    with pytest.raises(UntrustedResultError, match="does not match"):
        verify(envelope, OTHER_KEY, [secret.public()])  # replayed for another action


def test_untrusted_unsigned_tampered_and_malformed_results_are_refused() -> None:
    secret, stranger = generate("ci"), generate("ci")  # same name, other key
    envelope = sign(secret, KEY, RESULT)
    with pytest.raises(UntrustedResultError, match="does not match"):
        verify(envelope, KEY, [stranger.public()])
    with pytest.raises(UntrustedResultError, match="not a trusted key"):
        verify(sign(generate("someone"), KEY, RESULT), KEY, [secret.public()])
    with pytest.raises(UntrustedResultError, match="unsigned"):
        verify(RESULT.encode(), KEY, [secret.public()])
    raw = msgpack.unpackb(envelope)
    raw["result"] = ActionResult(RESULT.outputs, 0, "e" * 64).encode()
    with pytest.raises(UntrustedResultError, match="does not match"):
        verify(msgpack.packb(raw), KEY, [secret.public()])
    for garbage in (b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({**raw, "signature": b"short"})):
        with pytest.raises(UntrustedResultError):
            verify(garbage, KEY, [secret.public()])
    # Well signed, but not an action result.
    bogus = dict(msgpack.unpackb(sign(secret, KEY, RESULT)))
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    bogus["result"] = b"not msgpack of a result"
    bogus["signature"] = Ed25519PrivateKey.from_private_bytes(secret.seed).sign(
        b"mk-action-result-1\0" + KEY.encode() + b"\0" + bogus["result"])
    with pytest.raises(UntrustedResultError, match="malformed"):
        verify(msgpack.packb(bogus), KEY, [secret.public()])


def test_key_files_round_trip(tmp_path: Path) -> None:
    key_file, pub_file, public = write_key_pair(tmp_path / "team-ci")
    secret = load_secret_key(key_file)
    assert secret.name == "team-ci" and secret.public() == public
    assert parse_public_key(pub_file.read_text()) == public
    with pytest.raises(SigningKeyError, match="already exists"):
        write_key_pair(tmp_path / "team-ci")
    for bad in ("nocolon", "bad name:AAAA", "ci:not base64!", f"ci:{base64.b64encode(b'short').decode()}"):
        with pytest.raises(SigningKeyError):
            parse_public_key(bad)


# ---- settings and redaction ---------------------------------------------------------------------


def test_environment_overrides_settings(tmp_path: Path) -> None:
    key_file, _, public = write_key_pair(tmp_path / "ci")
    settings = Settings(remote_cache="https://cache.example/mk/", trusted_keys=(public.line(),), remote_upload=False)
    assert resolve(Settings(), {}) is None
    assert resolve(settings, {"MK_REMOTE_CACHE": ""}) is None  # the environment turns it off
    config = resolve(settings, {})
    assert config is not None
    assert (config.url, config.upload, config.trusted_keys) == ("https://cache.example/mk", False, (public,))
    config = resolve(settings, {"MK_REMOTE_UPLOAD": "1", "MK_SIGNING_KEY": str(key_file), "MK_TRUSTED_KEYS": ""})
    assert config is not None and config.upload and config.trusted_keys == ()
    assert config.signing_key == load_secret_key(key_file)
    config = resolve(settings, {"MK_REMOTE_UPLOAD": "1"}, upload=False)  # the flag wins
    assert config is not None and not config.upload


def test_credentials_come_out_of_the_url_and_out_of_messages() -> None:
    config = resolve(Settings(), {"MK_REMOTE_CACHE": "https://ci:p%40ss@cache.example:8443/x"})
    assert config is not None
    assert config.url == "https://cache.example:8443/x" and config.basic_auth == ("ci", "p@ss")
    header = config.headers()["authorization"]
    assert config.redact(f"failed with p@ss and {header}") == "failed with *** and Basic ***"
    token = RemoteConfig("http://h", token="s3cret-token")
    assert token.headers() == {"Authorization": "Bearer s3cret-token"}
    assert token.redact("Bearer s3cret-token") == "Bearer ***"
    with pytest.raises(MkError, match="an URL with credentials") as e:
        resolve(Settings(), {"MK_REMOTE_CACHE": "ftp://u:hunter2@h/"})
    assert "hunter2" not in str(e.value)


def test_the_namespace_of_remembered_results_follows_the_remote_and_the_keys() -> None:
    one, two = generate("one").public(), generate("two").public()
    base = RemoteConfig("http://h", trusted_keys=(one,))
    assert base.namespace() == RemoteConfig("http://h", trusted_keys=(one,)).namespace()
    assert base.namespace() != RemoteConfig("http://other", trusted_keys=(one,)).namespace()
    assert base.namespace() != RemoteConfig("http://h", trusted_keys=(one, two)).namespace()


# ---- the embedded server ------------------------------------------------------------------------


ServerFactory = Callable[..., CacheServer]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[tuple[CacheServer, threading.Thread]] = []

    def start(read_only: bool = False, token: str | None = None, max_size: int | None = None) -> CacheServer:
        server = make_server(ServerOptions(tmp_path / "store", port=0, read_only=read_only, token=token,
                                           max_size=max_size))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def request(server: CacheServer, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return http_request(server.url, method, path, body, headers)


def blob(data: bytes) -> tuple[str, bytes]:
    return digest_bytes(data), zstandard.ZstdCompressor().compress(data)


def test_server_stores_verified_blobs_and_results(server_factory: ServerFactory) -> None:
    server = server_factory()
    digest, compressed = blob(b"hello\n")
    assert request(server, "GET", f"/cas/{digest}")[0] == 404
    assert request(server, "HEAD", f"/cas/{digest}")[0] == 404
    assert request(server, "PUT", f"/cas/{digest}", compressed)[0] == 201
    assert request(server, "GET", f"/cas/{digest}") == (200, compressed)
    assert request(server, "HEAD", f"/prefix/cas/{digest}") == (200, b"")  # any prefix
    assert request(server, "PUT", f"/ac/{KEY}", b"anything")[0] == 201  # clients check results
    assert request(server, "GET", f"/ac/{KEY}") == (200, b"anything")
    assert request(server, "GET", "/cas/../../etc/passwd")[0] == 404
    assert request(server, "PUT", "/other/thing", b"x")[0] == 404


@pytest.mark.parametrize("body", [b"not zstd", zstandard.ZstdCompressor().compress(b"other bytes"), b""])
def test_server_refuses_a_blob_that_is_not_its_digest(server_factory: ServerFactory, body: bytes) -> None:
    server = server_factory()
    digest, _ = blob(b"hello\n")
    assert request(server, "PUT", f"/cas/{digest}", body)[0] == 400
    assert request(server, "GET", f"/cas/{digest}")[0] == 404
    assert [p for p in server.storage.root.rglob("*") if p.is_file()] == []


def test_server_read_only_and_token(server_factory: ServerFactory) -> None:
    digest, compressed = blob(b"x")
    ro = server_factory(read_only=True)
    assert request(ro, "PUT", f"/cas/{digest}", compressed)[0] == 403
    ro.shutdown()
    locked = server_factory(token="t0ken")
    assert request(locked, "GET", f"/cas/{digest}")[0] == 401
    assert request(locked, "PUT", f"/cas/{digest}", compressed, {"Authorization": "Bearer nope"})[0] == 401
    assert request(locked, "PUT", f"/cas/{digest}", compressed, {"Authorization": "Bearer t0ken"})[0] == 201
    basic = "Basic " + base64.b64encode(b"anyone:t0ken").decode()
    assert request(locked, "GET", f"/cas/{digest}", headers={"Authorization": basic}) == (200, compressed)


def test_server_evicts_least_recently_used(server_factory: ServerFactory) -> None:
    entries = [blob(bytes([i]) * 50_000 + b"%d" % i) for i in range(3)]
    size = len(entries[0][1])
    server = server_factory(max_size=2 * size + size // 2)  # room for two
    first, second, third = entries
    assert request(server, "PUT", f"/cas/{first[0]}", first[1])[0] == 201
    assert request(server, "PUT", f"/cas/{second[0]}", second[1])[0] == 201
    assert request(server, "GET", f"/cas/{first[0]}")[0] == 200  # first is now the most recent
    assert request(server, "PUT", f"/cas/{third[0]}", third[1])[0] == 201
    assert request(server, "GET", f"/cas/{second[0]}")[0] == 404  # the least recently used went
    assert request(server, "GET", f"/cas/{first[0]}")[0] == 200
    assert request(server, "GET", f"/cas/{third[0]}")[0] == 200
    assert server.storage.total <= 2 * size + size // 2
