"""OAuth2 tokens: the provider's token endpoint, and the access token of each mailbox signed in with
one.

An access token lives about an hour.  :meth:`AccessTokens.access_token` hands
out the stored one while it has more than ``sync_oauth_refresh_margin_seconds``
left, and otherwise renews it with the refresh token, once per mailbox however
many connections ask at the same moment: callers in one process wait on one
lock per mailbox, and across processes and replicas a PostgreSQL advisory lock
on the mailbox id serialises the renewal, the second holder finding the token
the first one stored.  A new sign-in saves without that lock: a renewal that
the provider refuses (``invalid_grant``, the old consent withdrawn) while the
new sign-in was being saved takes the new tokens instead of an error.  The
new access token (and a rotated refresh token) is sealed like a password
(R25) in the same transaction.

A token endpoint that answers 5xx, times out or cannot be reached is asked
again with backoff (``sync_oauth_attempts`` tries); after that the caller gets
``oauth_unavailable``, a transient failure.  ``invalid_grant`` (consent
withdrawn, password changed, token expired) is ``oauth_revoked``: only a new
sign-in fixes it.  No token is ever logged: tokens are kept out of every repr,
and errors carry the endpoint's error code, never its request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.backoff import Backoff
from leadline_kit.db import Database
from leadline_kit.sealing import CredentialError, Sealed
from leadline_mail.net import ErrorKind, MailConnectionError
from leadline_sync.config import Settings
from leadline_sync.credentials import CredentialCipher, MailboxSecrets
from leadline_sync.mailbox.fixes import PROVIDER_NAMES
from leadline_sync.mailbox.repository import mailbox_by_id
from leadline_sync.oauth import repository
from leadline_sync.oauth.apps import OAuthApp

log = logging.getLogger("leadline.sync.oauth")

TOKEN_ENDPOINT_RETRY = Backoff(0.5, 8.0)


class TokenRefused(Exception):
    """The token endpoint answered 4xx: ``error`` is its OAuth2 error code (``invalid_grant``,
    ...)."""

    def __init__(self, error: str, status: int) -> None:
        super().__init__(f"token endpoint refused: {error} (HTTP {status})")
        self.error = error
        self.status = status


class TokenEndpointUnavailable(Exception):
    """The token endpoint answered 5xx, timed out or could not be reached, every time it was
    asked."""


@dataclass(frozen=True)
class TokenSet:
    access_token: str = field(repr=False)
    expires_at: datetime
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)


def id_token_claims(id_token: str) -> dict[str, Any]:
    """The claims of an ID token received straight from the token endpoint over TLS.

    OpenID Connect Core §3.1.3.7: a token from the token endpoint over TLS may
    be trusted on the strength of TLS; the caller still checks ``aud``,
    ``iss``, ``exp`` and ``nonce``.  ValueError if it cannot be read.
    """
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, binascii.Error, ValueError) as exc:
        raise ValueError("the ID token cannot be read") from exc
    if not isinstance(claims, dict):
        raise ValueError("the ID token holds no claims")
    return claims


class TokenEndpoint:
    """Calls to a provider's token and userinfo endpoints, retried with backoff when the provider is
    down."""

    def __init__(self, settings: Settings, clock: Any) -> None:
        self.settings = settings
        self.clock = clock
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.sync_oauth_timeout, follow_redirects=False
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def _post(self, app: OAuthApp, form: dict[str, str]) -> dict[str, Any]:
        form = {**form, "client_id": app.client_id, "client_secret": app.client_secret}
        attempts = self.settings.sync_oauth_attempts
        for attempt in range(attempts):
            try:
                response = await self.client.post(
                    app.token_url, data=form, headers={"Accept": "application/json"}
                )
            except httpx.TransportError as exc:
                reason = type(exc).__name__
            else:
                if response.status_code < 500:
                    try:
                        body = response.json()
                    except ValueError:
                        body = None
                    if not isinstance(body, dict):
                        raise TokenRefused("unreadable_answer", response.status_code)
                    if response.status_code >= 400 or "error" in body:
                        raise TokenRefused(
                            str(body.get("error", "invalid_request"))[:100], response.status_code
                        )
                    return body
                reason = f"HTTP {response.status_code}"
            if attempt + 1 < attempts:
                delay = TOKEN_ENDPOINT_RETRY.seconds(attempt)
                log.warning(
                    "%s token endpoint: %s; asking again in %.1fs", app.provider, reason, delay
                )
                await asyncio.sleep(delay)
        raise TokenEndpointUnavailable(
            f"{app.provider} token endpoint: {reason} after {attempts} tries"
        )

    def _tokens(self, body: dict[str, Any]) -> TokenSet:
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise TokenRefused("no_access_token", 200)
        expires_in = body.get("expires_in", 3600)
        seconds = float(expires_in) if isinstance(expires_in, int | float | str) else 3600.0
        refresh, id_token = body.get("refresh_token"), body.get("id_token")
        return TokenSet(
            access_token=access,
            expires_at=self.clock() + timedelta(seconds=seconds),
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            id_token=id_token if isinstance(id_token, str) and id_token else None,
        )

    async def exchange_code(self, app: OAuthApp, code: str, verifier: str) -> TokenSet:
        return self._tokens(
            await self._post(
                app,
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": app.redirect_url,
                    "code_verifier": verifier,
                },
            )
        )

    async def refresh(self, app: OAuthApp, refresh_token: str) -> TokenSet:
        return self._tokens(
            await self._post(app, {"grant_type": "refresh_token", "refresh_token": refresh_token})
        )

    async def userinfo(self, app: OAuthApp, access_token: str) -> dict[str, Any]:
        if app.userinfo_url is None:
            return {}
        try:
            response = await self.client.get(
                app.userinfo_url, headers={"Authorization": f"Bearer {access_token}"}
            )
            body = response.json() if response.status_code == 200 else {}
        except (httpx.TransportError, ValueError):
            return {}
        return body if isinstance(body, dict) else {}


class _SignedInAgain(Exception):
    """A new sign-in stored other tokens while the old refresh token was being refused."""


async def _tokens_replaced(session: AsyncSession, row: Any) -> bool:
    """Whether the row's sealed tokens changed since ``row`` was read (a new sign-in saves without
    our lock)."""
    return bool(await repository.sealed_tokens(session, row.id) != row.credential_ciphertext)


class AccessTokens:
    """The live access token of each OAuth2 mailbox, renewed once per mailbox ahead of expiry."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        cipher: CredentialCipher,
        apps: dict[str, OAuthApp],
        endpoint: TokenEndpoint,
        clock: Any,
    ) -> None:
        self.settings = settings
        self.db = db
        self.cipher = cipher
        self.apps = apps
        self.endpoint = endpoint
        self.clock = clock
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}

    async def access_token(self, mailbox_id: uuid.UUID) -> str:
        """A token with at least the margin left; MailConnectionError (``oauth_*``) when none can be
        had."""
        async with self._locks.setdefault(mailbox_id, asyncio.Lock()):
            try:
                return await self._access_token(mailbox_id, recheck=True)
            except _SignedInAgain:
                return await self._access_token(mailbox_id, recheck=False)

    async def refused(self, mailbox_id: uuid.UUID, token: str) -> None:
        """A mail server refused ``token`` before its expiry (revoked early): the next ask renews
        it.

        Only if it is still the stored one, so that connections refused with the same token renew
        once."""
        async with self._locks.setdefault(mailbox_id, asyncio.Lock()), self.db.session() as session:
            await repository.lock_tokens(session, mailbox_id)
            row = await mailbox_by_id(session, mailbox_id)
            if row is None or row.auth != "oauth2" or row.credential_ciphertext is None:
                return
            try:
                stored = self.cipher.open(
                    row.company_id,
                    row.id,
                    Sealed(
                        row.credential_key_id, row.credential_wrapped_key, row.credential_ciphertext
                    ),
                ).access_token
            except CredentialError:
                return
            if stored == token:
                log.info(
                    "mailbox %s: the mail server refused a live access token; renewing it", row.id
                )
                await repository.expire_access_token(session, row.id, self.clock())

    async def _access_token(self, mailbox_id: uuid.UUID, recheck: bool) -> str:
        margin = timedelta(seconds=self.settings.sync_oauth_refresh_margin_seconds)
        async with self.db.session() as session:
            await repository.lock_tokens(session, mailbox_id)
            row = await mailbox_by_id(session, mailbox_id)
            if row is None or row.auth != "oauth2" or row.credential_ciphertext is None:
                raise MailConnectionError(
                    ErrorKind.OAUTH_REVOKED, "This mailbox has no sign-in to renew."
                )
            name = PROVIDER_NAMES.get(row.provider, row.provider)
            try:
                secrets = self.cipher.open(
                    row.company_id,
                    row.id,
                    Sealed(
                        row.credential_key_id, row.credential_wrapped_key, row.credential_ciphertext
                    ),
                )
            except CredentialError as exc:
                log.error("mailbox %s: stored tokens unreadable: %s", row.id, exc)
                raise MailConnectionError(
                    ErrorKind.OAUTH_REVOKED, f"The saved sign-in with {name} could not be read."
                ) from None
            if row.oauth_expires_at is not None and row.oauth_expires_at - self.clock() > margin:
                return secrets.access_token
            app = self.apps.get(row.provider)
            if app is None:
                raise MailConnectionError(
                    ErrorKind.OAUTH_UNAVAILABLE,
                    f"Signing in with {name} is not configured on this Leadline server.",
                )
            try:
                tokens = await self.endpoint.refresh(app, secrets.refresh_token)
            except TokenRefused as exc:
                log.warning(
                    "mailbox %s: %s refused to renew the access token: %s",
                    row.id,
                    row.provider,
                    exc.error,
                )
                if exc.error == "invalid_grant":
                    if recheck and await _tokens_replaced(session, row):
                        # the user signed in again while this renewal was under way: use the new
                        # sign-in
                        log.info("mailbox %s: signed in again while a renewal was refused", row.id)
                        raise _SignedInAgain from None
                    raise MailConnectionError(
                        ErrorKind.OAUTH_REVOKED,
                        (
                            f"{name} no longer lets Leadline use this mailbox (access withdrawn or "
                            f"password changed)."
                        ),
                        detail=exc.error,
                    ) from None
                raise MailConnectionError(
                    ErrorKind.OAUTH_UNAVAILABLE,
                    f"{name} refused to renew the sign-in.",
                    detail=exc.error,
                ) from None
            except TokenEndpointUnavailable as exc:
                raise MailConnectionError(
                    ErrorKind.OAUTH_UNAVAILABLE,
                    f"{name}'s sign-in service is not answering.",
                    detail=str(exc),
                ) from None
            sealed = self.cipher.seal(
                row.company_id,
                row.id,
                MailboxSecrets(
                    imap_password="",
                    smtp_password="",
                    refresh_token=tokens.refresh_token or secrets.refresh_token,
                    access_token=tokens.access_token,
                ),
            )
            await repository.store_tokens(session, row.id, sealed, tokens.expires_at)
            log.info(
                "mailbox %s: access token renewed (expires %s)",
                row.id,
                f"{tokens.expires_at:%H:%M:%S}",
            )
            return tokens.access_token
