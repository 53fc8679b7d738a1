"""API keys: ``ll_<key id>_<secret>``, stored as the SHA-256 of the secret, shown once.

The secret is 32 random bytes, so a plain SHA-256 is enough (no password
stretching needed for high-entropy keys).  Every request looks its key up in
the database (one primary-key join), so a revoked or expired key, a deleted
user or a changed role takes effect at once in every gateway process: no cache
to invalidate.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from leadline_gateway.accounts import repository
from leadline_gateway.problems import (
    InvalidApiKey,
    InvalidOperatorToken,
    MissingApiKey,
    OperatorApiOff,
)
from leadline_kit.db import Database
from leadline_kit.errors import Unauthorized
from leadline_kit.identity import OPERATOR, Identity

KEY_PREFIX = "ll_"
OPERATOR_PREFIX = "/v1/operator/"


@dataclass(frozen=True)
class NewApiKey:
    key_id: uuid.UUID
    token: str
    secret_sha256: str


def new_api_key() -> NewApiKey:
    key_id = uuid.uuid4()
    secret = secrets.token_urlsafe(32)
    return NewApiKey(key_id, f"{KEY_PREFIX}{key_id.hex}_{secret}", _digest(secret))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _parse(token: str) -> tuple[uuid.UUID, str]:
    if not token.startswith(KEY_PREFIX):
        raise ValueError("not a Leadline API key")
    key_hex, _, secret = token[len(KEY_PREFIX) :].partition("_")
    if not secret:
        raise ValueError("not a Leadline API key")
    return uuid.UUID(hex=key_hex), secret


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether ``Authorization: Bearer <token>`` names ``token`` (an operator's token), in constant
    time."""
    given = (
        authorization[7:].strip()
        if authorization and authorization.lower().startswith("bearer ")
        else ""
    )
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def _invalid() -> Unauthorized:
    return InvalidApiKey(
        "the API key is not valid (unknown, revoked or expired)",
        headers={"WWW-Authenticate": "Bearer"},
    )


class ApiKeyAuthenticator:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def authenticate(self, authorization: str | None) -> Identity:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise MissingApiKey(
                "send your API key as 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            key_id, secret = _parse(authorization[7:].strip())
        except ValueError as exc:
            raise _invalid() from exc
        found = await self._load(key_id)
        if found is None or not hmac.compare_digest(found[0], _digest(secret)):
            raise _invalid()
        return found[1]

    async def _load(self, key_id: uuid.UUID) -> tuple[str, Identity] | None:
        async with self.db.plain() as conn:
            row = await repository.request_key(conn, key_id)
        if row is None:
            return None
        return row["secret_sha256"], Identity(
            company_id=row["company_id"], user_id=row["id"], role=row["role"], api_key_id=key_id
        )


def authenticate_operator(authorization: str | None, operator_token: str | None) -> Identity:
    """The operator identity for the operator token (routes under ``/v1/operator/`` only; never an
    API key)."""
    if operator_token is None:
        raise OperatorApiOff("the operator API is off: the operator sets LEADLINE_OPERATOR_TOKEN")
    if not bearer_matches(authorization, operator_token):
        raise InvalidOperatorToken(
            "send the operator token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return OPERATOR
