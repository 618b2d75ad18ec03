"""ed25519 signatures on action results, so a remote cache cannot make a build use forged results.

Keys are written the way Nix writes its binary-cache keys: `NAME:BASE64`, one per line.
`NAME.key` holds the 32-byte secret seed, `NAME.pub` the 32-byte public key; the public line is
what `trusted_keys` and `MK_TRUSTED_KEYS` list.

A signed result travels as a msgpack map, the *envelope*:

    {"format": 1, "signer": NAME, "result": RESULT, "signature": SIG}

where RESULT is the exact bytes of the action-cache entry (`ActionResult.encode()`) and SIG is
the ed25519 signature of `b"mk-action-result-1\\0" + KEY + b"\\0" + RESULT`, KEY being the action
key in ASCII hex. Because the key is signed too, a valid envelope copied to another key's path is
rejected. The `cryptography` package is imported only when a signature is made or checked.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

from mk.cache.action_cache import ActionResult

_FORMAT = 1
_CONTEXT = b"mk-action-result-1\0"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_RAW_KEY = 32
_SIGNATURE = 64


class SigningKeyError(ValueError):
    """A key file or key string that cannot be used."""


class UntrustedResultError(ValueError):
    """An envelope that is malformed, unsigned, signed by an unknown key, or wrongly signed."""


@dataclass(frozen=True)
class PublicKey:
    name: str
    raw: bytes

    def line(self) -> str:
        return f"{self.name}:{base64.b64encode(self.raw).decode()}"


@dataclass(frozen=True)
class SecretKey:
    name: str
    seed: bytes

    def public(self) -> PublicKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        raw = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PublicKey(self.name, raw)

    def line(self) -> str:
        return f"{self.name}:{base64.b64encode(self.seed).decode()}"


def _split(text: str, what: str) -> tuple[str, bytes]:
    name, sep, encoded = text.strip().partition(":")
    if not sep or not _NAME.fullmatch(name):
        raise SigningKeyError(f"{what} is not of the form NAME:BASE64")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError(f"{what} ('{name}:...') is not valid base64") from None
    if len(raw) != _RAW_KEY:
        raise SigningKeyError(f"{what} ('{name}:...') is not a 32-byte ed25519 key")
    return name, raw


def parse_public_key(text: str) -> PublicKey:
    name, raw = _split(text, "trusted key")
    return PublicKey(name, raw)


def parse_public_keys(texts: Iterable[str]) -> tuple[PublicKey, ...]:
    return tuple(parse_public_key(t) for t in texts if t.strip())


def load_secret_key(path: Path) -> SecretKey:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise SigningKeyError(f"cannot read the signing key {path}: {getattr(e, 'strerror', None) or e}") from None
    name, seed = _split(text, f"signing key {path}")
    return SecretKey(name, seed)


def generate(name: str) -> SecretKey:
    if not _NAME.fullmatch(name):
        raise SigningKeyError(f"key name '{name}' must be letters, digits, '.', '_' or '-' (at most 100)")
    return SecretKey(name, os.urandom(_RAW_KEY))


def write_key_pair(prefix: Path) -> tuple[Path, Path, PublicKey]:
    """Write PREFIX.key (mode 0600) and PREFIX.pub; the key's name is PREFIX's file name."""
    secret = generate(prefix.name)
    key_file, pub_file = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for file in (key_file, pub_file):
        if file.exists():
            raise SigningKeyError(f"{file} already exists; not overwriting a key")
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret.line() + "\n")
    public = secret.public()
    pub_file.write_text(public.line() + "\n", encoding="ascii")
    return key_file, pub_file, public


def _message(key: str, result: bytes) -> bytes:
    return _CONTEXT + key.encode("ascii") + b"\0" + result


def sign(secret: SecretKey, key: str, result: ActionResult) -> bytes:
    """The envelope to store at `ac/<key>` on a remote cache."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    encoded = result.encode()
    signature = Ed25519PrivateKey.from_private_bytes(secret.seed).sign(_message(key, encoded))
    envelope: bytes = msgpack.packb(
        {"format": _FORMAT, "signer": secret.name, "result": encoded, "signature": signature}
    )
    return envelope


def verify(envelope: bytes, key: str, trusted: Sequence[PublicKey]) -> ActionResult:
    """The result in `envelope` if a trusted key signed it for `key`; raises UntrustedResultError."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        raw = msgpack.unpackb(envelope, raw=False, max_bin_len=1 << 24, max_str_len=1 << 12)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise UntrustedResultError(f"not a signed result (unsigned, or another format: {type(e).__name__})") from None
    if not isinstance(raw, dict) or set(raw) != {"format", "signer", "result", "signature"}:
        raise UntrustedResultError("not a signed result (unsigned, or another format)")
    signer, result, signature = raw["signer"], raw["result"], raw["signature"]
    if raw["format"] != _FORMAT or not isinstance(signer, str):
        raise UntrustedResultError("unknown envelope format")
    if not isinstance(result, bytes) or not isinstance(signature, bytes) or len(signature) != _SIGNATURE:
        raise UntrustedResultError("malformed envelope")
    candidates = [k for k in trusted if k.name == signer]
    if not candidates:
        raise UntrustedResultError(f"signed by '{signer[:100]}', which is not a trusted key")
    message = _message(key, result)
    for candidate in candidates:
        try:
            Ed25519PublicKey.from_public_bytes(candidate.raw).verify(signature, message)
        except InvalidSignature:
            continue
        try:
            decoded = ActionResult.decode(result)
        except ValueError as e:
            raise UntrustedResultError(str(e)) from None
        if decoded.exit_code != 0:
            raise UntrustedResultError("a failed action's result")
        return decoded
    raise UntrustedResultError(f"the signature by '{signer[:100]}' does not match this action")
