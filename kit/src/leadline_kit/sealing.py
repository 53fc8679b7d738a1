"""Secrets at rest (R25): envelope encryption with AES-256-GCM, one implementation for every
service.

A secret is encrypted under a fresh random data key, and the data key is stored
wrapped by a key-encryption key (KEK) named by its id.  Both layers bind the
caller's associated data (the identity of the row that holds the secret), so a
ciphertext copied into another row fails to open instead of handing one
account's password to another.

Keys come from a setting ``"id:key,id:key"``: the first one seals, every one
opens.  A key is 32 bytes written as 64 hex digits or as base64.  Rotation: put
the new key first, re-seal every row (each service has a command for it), then
drop the old key.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
KEY_BYTES = 32
WRAPPED_KEY_BYTES = NONCE_BYTES + KEY_BYTES + 16  # nonce, data key, GCM tag


class CredentialError(Exception):
    """A sealed secret cannot be opened: its key is not configured, or it was tampered with or
    moved."""


@dataclass(frozen=True)
class Sealed:
    key_id: str
    wrapped_key: bytes  # nonce + AES-GCM(data key) under the KEK
    ciphertext: bytes  # nonce + AES-GCM(secret) under the data key

    def __repr__(self) -> str:
        return f"Sealed(key_id={self.key_id!r}, ...)"


def _decode_key(text: str) -> bytes:
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return b""


def parse_keys(spec: str, setting: str) -> list[tuple[str, bytes]]:
    """``"id:key,..."`` as (id, 32 bytes) pairs, current first; ValueError naming ``setting``
    otherwise."""
    keys: list[tuple[str, bytes]] = []
    for entry in spec.split(","):
        if not entry.strip():
            continue
        key_id, separator, text = entry.strip().partition(":")
        if not separator or not key_id or len(_decode_key(text)) != KEY_BYTES:
            raise ValueError(
                f"{setting} entries are 'id:key' with a key of 32 bytes as 64 hex digits or base64"
            )
        keys.append((key_id, _decode_key(text)))
    if not keys:
        raise ValueError(f"{setting} names no key")
    return keys


class KeyRing:
    """The configured KEKs; seals under the first."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("at least one key-encryption key is needed")
        self.current_key_id = keys[0][0]
        self._keks = {key_id: AESGCM(key) for key_id, key in keys}

    def seal(self, secret: bytes, associated: bytes) -> Sealed:
        data_key = AESGCM.generate_key(bit_length=8 * KEY_BYTES)
        key_nonce, nonce = os.urandom(NONCE_BYTES), os.urandom(NONCE_BYTES)
        wrapped = key_nonce + self._keks[self.current_key_id].encrypt(
            key_nonce, data_key, associated
        )
        return Sealed(
            self.current_key_id,
            wrapped,
            nonce + AESGCM(data_key).encrypt(nonce, secret, associated),
        )

    def open(self, sealed: Sealed, associated: bytes) -> bytes:
        kek = self._keks.get(sealed.key_id)
        if kek is None:
            raise CredentialError(f"credential key {sealed.key_id!r} is not configured")
        try:
            data_key = kek.decrypt(
                sealed.wrapped_key[:NONCE_BYTES], sealed.wrapped_key[NONCE_BYTES:], associated
            )
            return AESGCM(data_key).decrypt(
                sealed.ciphertext[:NONCE_BYTES], sealed.ciphertext[NONCE_BYTES:], associated
            )
        except (InvalidTag, ValueError):
            raise CredentialError("the sealed secret does not open for this row") from None
