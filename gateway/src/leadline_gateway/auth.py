"""API keys: ``ll_<key id>_<secret>``, stored as the SHA-256 of the secret, shown once.

The secret is 32 random bytes, so a plain SHA-256 is enough (no password
stretching needed for high-entropy keys).  A validated key is cached for
``api_key_cache_seconds`` so the hot path does not query the database on every
request; revoking a key therefore takes effect within that delay.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select

from leadline_gateway import models
from leadline_kit.db import Database
from leadline_kit.errors import Unauthorized
from leadline_kit.identity import Identity

KEY_PREFIX = "ll_"


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
    key_hex, _, secret = token[len(KEY_PREFIX):].partition("_")
    if not secret:
        raise ValueError("not a Leadline API key")
    return uuid.UUID(hex=key_hex), secret


class ApiKeyAuthenticator:
    def __init__(self, db: Database, cache_seconds: float) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._cache: dict[uuid.UUID, tuple[str, Identity, float]] = {}

    async def authenticate(self, authorization: str | None) -> Identity:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("send your API key as 'Authorization: Bearer <key>'", slug="missing-api-key",
                               headers={"WWW-Authenticate": "Bearer"})
        try:
            key_id, secret = _parse(authorization[7:].strip())
        except ValueError as exc:
            raise Unauthorized("the API key is not valid", slug="invalid-api-key",
                               headers={"WWW-Authenticate": "Bearer"}) from exc
        digest = _digest(secret)
        cached = self._cache.get(key_id)
        now = time.monotonic()
        if cached and cached[2] > now:
            stored_digest, identity = cached[0], cached[1]
        else:
            found = await self._load(key_id)
            if found is None:
                self._cache.pop(key_id, None)
                raise Unauthorized("the API key is not valid", slug="invalid-api-key",
                                   headers={"WWW-Authenticate": "Bearer"})
            stored_digest, identity = found
            self._cache[key_id] = (stored_digest, identity, now + self.cache_seconds)
        if not hmac.compare_digest(stored_digest, digest):
            raise Unauthorized("the API key is not valid", slug="invalid-api-key",
                               headers={"WWW-Authenticate": "Bearer"})
        return identity

    def forget(self, key_id: uuid.UUID | None = None) -> None:
        if key_id is None:
            self._cache.clear()
        else:
            self._cache.pop(key_id, None)

    async def _load(self, key_id: uuid.UUID) -> tuple[str, Identity] | None:
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(models.api_key.c.secret_sha256, models.user.c.company_id, models.user.c.id,
                           models.user.c.role)
                    .join(models.user, models.user.c.id == models.api_key.c.user_id)
                    .where(models.api_key.c.id == key_id, models.api_key.c.revoked_at.is_(None))
                )
            ).first()
        if row is None:
            return None
        return row.secret_sha256, Identity(company_id=row.company_id, user_id=row.id, role=row.role,
                                           api_key_id=key_id)
