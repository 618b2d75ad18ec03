"""Sealed bytes: a payload after the blake3 of it (keyed, where a key is given).

mk seals what it reads back and believes without another check (action results, the stat cache,
the cached graph): a flipped bit anywhere is then caught before the payload is used, instead of
turning into another valid-looking value.
"""

from __future__ import annotations

import blake3

SEAL_BYTES = 32


def _digest(payload: bytes, key: bytes | None) -> bytes:
    hasher = blake3.blake3(payload, key=key) if key is not None else blake3.blake3(payload)
    digest: bytes = hasher.digest()
    return digest


def seal(payload: bytes, key: bytes | None = None) -> bytes:
    return _digest(payload, key) + payload


def unseal(data: bytes, key: bytes | None = None) -> bytes | None:
    """The payload, or None when the seal does not match it."""
    payload = data[SEAL_BYTES:]
    return payload if len(data) >= SEAL_BYTES and data[:SEAL_BYTES] == _digest(payload, key) else None
