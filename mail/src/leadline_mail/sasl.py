"""SASL initial responses for signing in with an OAuth2 access token (IMAP AUTHENTICATE, SMTP AUTH).

- ``XOAUTH2`` (Google's and Microsoft's mechanism): ``user=<address>^Aauth=Bearer <token>^A^A``.
- ``OAUTHBEARER`` (RFC 7628 §3.1): a GS2 header naming the user, then ``host``, ``port`` and
  ``auth=Bearer <token>`` key/value pairs, each ended by ``^A``, the message by one more ``^A``.

Both travel base64 encoded.  When the server refuses the token it answers with a
continuation carrying an error document; the client then ends the exchange (an
empty line for XOAUTH2, a single ``^A`` for OAUTHBEARER, RFC 7628 §3.2.3) and
the server completes the command with a failure.  A token or user name with a
control character is refused before anything is sent (R22).
"""

from __future__ import annotations

import base64
from typing import Literal

Mechanism = Literal["XOAUTH2", "OAUTHBEARER"]
# the standard one first, where offered
PREFERRED: tuple[Mechanism, ...] = ("OAUTHBEARER", "XOAUTH2")

ABORT_RESPONSE: dict[Mechanism, bytes] = {"XOAUTH2": b"", "OAUTHBEARER": base64.b64encode(b"\x01")}
"""What the client answers to an error challenge to end the exchange."""


def _checked(value: str) -> str:
    if not value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(
            "a user name or token for SASL must be non-empty and free of control characters"
        )
    return value


def initial_response(
    mechanism: Mechanism, user: str, token: str, host: str = "", port: int = 0
) -> bytes:
    """The base64 initial client response of ``mechanism``."""
    user, token = _checked(user), _checked(token)
    if mechanism == "XOAUTH2":
        message = f"user={user}\x01auth=Bearer {token}\x01\x01"
    else:
        saslname = user.replace("=", "=3D").replace(",", "=2C")
        message = f"n,a={saslname},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(message.encode())


def choose_mechanism(
    offered: frozenset[str] | set[str], acceptable: tuple[Mechanism, ...] = PREFERRED
) -> Mechanism | None:
    """The first of ``acceptable`` that a server offers (upper case names), None if it offers
    none."""
    for mechanism in acceptable:
        if mechanism in offered:
            return mechanism
    return None
