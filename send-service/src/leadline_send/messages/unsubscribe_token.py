"""One-click unsubscribe tokens (R16): the company and the address, signed with HMAC-SHA256.

``base64url(company uuid bytes + address) "." base64url(first 16 bytes of the MAC)``.
The token needs no database row, so every marketing message can carry one, and
it cannot be forged to unsubscribe someone else or another company's lead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), b"unsubscribe:" + payload, hashlib.sha256).digest()[:16]


def make_token(secret: str, company_id: uuid.UUID, address: str) -> str:
    payload = company_id.bytes + address.encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def read_token(secret: str, token: str) -> tuple[uuid.UUID, str] | None:
    """(company, address), or None for anything not made by :func:`make_token` with this secret."""
    body, _, mac = token.partition(".")
    try:
        payload, signature = _unb64(body), _unb64(mac)
        if len(payload) <= 16 or not hmac.compare_digest(_mac(secret, payload), signature):
            return None
        return uuid.UUID(bytes=payload[:16]), payload[16:].decode()
    except (ValueError, UnicodeDecodeError):
        return None
