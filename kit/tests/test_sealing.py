"""The kit's envelope encryption (R25): what both services' stored credentials rely on."""

from __future__ import annotations

import base64

import pytest

from leadline_kit.sealing import CredentialError, KeyRing, Sealed, parse_keys

OLD, NEW = b"o" * 32, b"n" * 32


def test_keys_are_read_as_hex_or_base64_current_first() -> None:
    spec = f"new:{NEW.hex()}, old:{base64.b64encode(OLD).decode()}"
    assert parse_keys(spec, "SETTING") == [("new", NEW), ("old", OLD)]
    for bad in ("", "nocolon", f"k:{b'short'.hex()}", "k:not base64!", f":{NEW.hex()}"):
        with pytest.raises(ValueError, match="SETTING"):
            parse_keys(bad, "SETTING")


def test_a_sealed_secret_opens_only_with_its_row_and_a_configured_key() -> None:
    ring = KeyRing([("old", OLD)])
    sealed = ring.seal(b"hunter2", b"row-1")
    assert b"hunter2" not in sealed.wrapped_key + sealed.ciphertext and "hunter2" not in repr(
        sealed
    )
    assert ring.open(sealed, b"row-1") == b"hunter2"
    with pytest.raises(CredentialError):
        ring.open(sealed, b"row-2")  # copied into another row
    with pytest.raises(CredentialError):
        ring.open(
            Sealed(sealed.key_id, sealed.wrapped_key, sealed.ciphertext[:-1] + b"x"), b"row-1"
        )
    rotated = KeyRing([("new", NEW), ("old", OLD)])
    assert rotated.open(sealed, b"row-1") == b"hunter2"  # the old key still opens during a rotation
    resealed = rotated.seal(rotated.open(sealed, b"row-1"), b"row-1")
    assert resealed.key_id == "new"
    with pytest.raises(CredentialError, match="not configured"):
        KeyRing([("new", NEW)]).open(
            sealed, b"row-1"
        )  # the old key dropped: its rows no longer open
