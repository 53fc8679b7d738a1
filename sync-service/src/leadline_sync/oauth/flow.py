"""Signing in with Gmail or Microsoft for the caller's own mailbox (R1, R29), OAuth2 authorization
code + PKCE.

::

    POST /v1/mail-sync/oauth/{provider}/start (the caller)
        → state (256 bits, stored as its SHA-256, bound to the caller, single use, short-lived),
          PKCE verifier (RFC 7636, S256; sealed at rest), OpenID nonce
        → the provider's authorization URL
    the user consents at the provider, whose redirect brings the browser back with code and state
    GET /v1/mail-sync/oauth/callback?code&state (public: no API key in a redirect)
        → the state is taken (used once, even if what follows fails)
        → with the starter's key (a CRM page that received the redirect passes it on): finished now;
          with another user's key: 403, nothing saved
        → without a key: nothing is connected yet.  The code is sealed beside the verifier and a one-time
          sign-in (256 bits, stored as its SHA-256, valid ``sync_oauth_handoff_seconds``) is handed back to
          that browser: a 303 to the app's ``return_url`` with ``?sign_in=``, or in the body without one
    POST /v1/mail-sync/oauth/finish {"sign_in"} (the caller: must be the starter, else 403, nothing saved)
    finishing: the code exchanged with the verifier
        → the address: the ID token's verified email (aud, iss, exp, nonce checked), else the userinfo endpoint
        → IMAP and SMTP sign-in checked with the access token, as a password connect checks its logins
        → the mailbox saved like a password connect (R5 historical sync, R9 limit; a new sign-in for the
          connected address keeps the cursors, R10), the refresh token sealed with the company and mailbox
          ids as associated data (R25)

Why a key must finish every sign-in (login CSRF): the state proves which
Leadline user started a sign-in, not whose browser brings the answer back.
Someone could start a sign-in as themselves and get a victim to consent
through that authorization URL; a public callback that finished it would
connect the victim's mailbox to the attacker's user.  Leadline has no session
with the user's browser to bind the state to (only the CRM has), so the
callback never connects anything by itself: the CRM, which knows who its
logged-in user is, finishes with that user's key, and a sign-in started by
someone else is refused.  The one-time sign-in reaches only the browser that
consented, never the attacker who started.

The address is the one the provider proves; none may be given.  An unknown,
expired or used state or sign-in, an error from the provider, or an address
the caller cannot connect is a 4xx problem and nothing is stored but the
state's use.
"""  # noqa: E501

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from leadline_kit.identity import Identity
from leadline_kit.sealing import CredentialError, Sealed
from leadline_mail.addresses import normalize_address
from leadline_sync.context import SyncContext
from leadline_sync.credentials import MailboxSecrets
from leadline_sync.logins import ServerLogin
from leadline_sync.mailbox.connect import CheckedMailbox, check_logins, save
from leadline_sync.oauth import repository
from leadline_sync.oauth.apps import OAuthApp
from leadline_sync.oauth.tokens import (
    TokenEndpointUnavailable,
    TokenRefused,
    TokenSet,
    id_token_claims,
)
from leadline_sync.problems import (
    OAuthIdentityInvalid,
    OAuthNotConfigured,
    OAuthProviderError,
    OAuthProviderUnavailable,
    OAuthSignInInvalid,
    OAuthStateInvalid,
    OAuthStateOtherUser,
    ProviderNotFound,
)
from leadline_sync.providers import Provider, ServerPreset, providers


@dataclass(frozen=True)
class Authorization:
    url: str
    expires_at: datetime


def _state_hash(state: str) -> bytes:
    return hashlib.sha256(state.encode()).digest()


def app_for(context: SyncContext, provider: str) -> tuple[Provider, OAuthApp]:
    preset = providers().get(provider)
    if preset is None:
        raise ProviderNotFound(f"unknown provider {provider!r}; see GET /v1/mail-sync/providers")
    app = context.oauth_apps.get(provider)
    if app is None:
        raise OAuthNotConfigured(
            f"signing in with {preset.name} is not set up on this Leadline server; connect with a "
            "password or ask the operator",
        )
    return preset, app


def _seal_pending(context: SyncContext, state_id: uuid.UUID, verifier: str, code: str) -> Sealed:
    # the row's secrets, sealed with its id as associated data: the PKCE verifier and, once brought,
    # the code
    return context.cipher.seal(
        state_id, state_id, MailboxSecrets(imap_password=verifier, smtp_password=code)
    )


async def start(
    context: SyncContext, caller: Identity, provider: str, smtp_use: str
) -> Authorization:
    _, app = app_for(context, provider)
    state, verifier, nonce = (secrets.token_urlsafe(32) for _ in range(3))
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    state_id = uuid.uuid4()
    sealed = _seal_pending(context, state_id, verifier, "")
    now = context.clock()
    expires_at = now + timedelta(seconds=context.settings.sync_oauth_state_seconds)
    async with context.db.session() as session:
        await repository.forget_expired_states(session, now)
        await repository.insert_state(
            session,
            id=state_id,
            state_sha256=_state_hash(state),
            company_id=caller.company_id,
            user_id=caller.user_id,
            provider=provider,
            smtp_use=smtp_use,
            nonce=nonce,
            verifier_key_id=sealed.key_id,
            verifier_wrapped_key=sealed.wrapped_key,
            verifier_ciphertext=sealed.ciphertext,
            created_at=now,
            expires_at=expires_at,
        )
    query = {
        "response_type": "code",
        "client_id": app.client_id,
        "redirect_uri": app.redirect_url,
        "scope": " ".join(app.scopes),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "nonce": nonce,
        **dict(app.extra),
    }
    return Authorization(
        url=app.authorization_url + "?" + urllib.parse.urlencode(query), expires_at=expires_at
    )


@dataclass(frozen=True)
class PendingSignIn:
    id: uuid.UUID
    company_id: uuid.UUID
    user_id: uuid.UUID
    provider: str
    smtp_use: str
    nonce: str
    verifier: str = field(repr=False)
    code: str = field(default="", repr=False)  # once the callback has brought it without a key


@dataclass(frozen=True)
class HandOff:
    """A sign-in brought back without a key, waiting for its starter's key (POST
    /v1/mail-sync/oauth/finish)."""

    sign_in: str = field(repr=False)
    expires_at: datetime
    return_url: str | None  # where the browser goes on with ``?sign_in=``, when the app names one


def _pending(context: SyncContext, row: Any) -> PendingSignIn:
    try:
        secrets_ = context.cipher.open(
            row.id,
            row.id,
            Sealed(row.verifier_key_id, row.verifier_wrapped_key, row.verifier_ciphertext),
        )
    except CredentialError:
        raise OAuthStateInvalid(
            (
                "this sign-in can no longer be read (the server's keys changed); start again from "
                "Mail Sync"
            ),
        ) from None
    return PendingSignIn(
        row.id,
        row.company_id,
        row.user_id,
        row.provider,
        row.smtp_use,
        row.nonce,
        secrets_.imap_password,
        secrets_.smtp_password,
    )


async def _take(context: SyncContext, secret: str, handed_off: bool) -> PendingSignIn:
    """The sign-in a state (or a handed-back sign-in) names, used up now; a 400 if unknown, expired
    or used."""
    async with context.db.session() as session:
        row = await repository.take_state(
            session, _state_hash(secret), context.clock(), handed_off=handed_off
        )
    if row is None:
        if handed_off:
            raise OAuthSignInInvalid(
                "this sign-in is unknown, expired or already finished; start again from Mail Sync",
            )
        raise OAuthStateInvalid(
            "this sign-in link is unknown, expired or already used; start again from Mail Sync",
        )
    return _pending(context, row)


async def _hand_off(context: SyncContext, pending: PendingSignIn, code: str) -> HandOff:
    sign_in = secrets.token_urlsafe(32)
    expires_at = context.clock() + timedelta(seconds=context.settings.sync_oauth_handoff_seconds)
    sealed = _seal_pending(context, pending.id, pending.verifier, code)
    async with context.db.session() as session:
        await repository.hand_off(session, pending.id, _state_hash(sign_in), expires_at, sealed)
    return HandOff(sign_in, expires_at, context.oauth_apps[pending.provider].return_url)


def _starter_only(pending: PendingSignIn, caller: Identity) -> None:
    if (caller.company_id, caller.user_id) != (pending.company_id, pending.user_id):
        raise OAuthStateOtherUser(
            "this sign-in was started by another user; each user connects only their own mailbox",
        )


async def _proven_address(context: SyncContext, app: OAuthApp, tokens: TokenSet, nonce: str) -> str:
    """The account's address as the provider proves it: the ID token's, else the userinfo
    endpoint's."""
    claims: dict[str, Any] = {}
    if tokens.id_token is not None:
        try:
            claims = id_token_claims(tokens.id_token)
        except ValueError:
            raise OAuthIdentityInvalid("the provider's ID token cannot be read") from None
        issuer = app.issuer
        if issuer is not None and "{tid}" in issuer:
            # Microsoft: the issuer names the account's directory
            issuer = issuer.replace("{tid}", str(claims.get("tid", "")))
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        expires = claims.get("exp")
        if (
            app.client_id not in audiences
            or not isinstance(expires, int | float)
            or expires < context.clock().timestamp()
            or not hmac.compare_digest(str(claims.get("nonce", "")), nonce)
            or (issuer is not None and claims.get("iss") != issuer)
        ):
            raise OAuthIdentityInvalid("the provider's ID token is not for this sign-in")
    address = claims.get("email") if claims.get("email_verified", True) is not False else None
    if not isinstance(address, str) and app.userinfo_url is not None:
        info = await context.endpoint.userinfo(app, tokens.access_token)
        address = info.get("email") if info.get("email_verified", True) is not False else None
    if not isinstance(address, str) and app.provider != "gmail":
        # Microsoft: the sign-in name, the mailbox's address
        address = claims.get("preferred_username")
    normalized = normalize_address(address) if isinstance(address, str) else None
    if normalized is None:
        raise OAuthIdentityInvalid(
            "the provider did not name a verified email address for this account"
        )
    return normalized


def _login(
    side: str, preset: ServerPreset | None, app: OAuthApp, address: str, token: str
) -> ServerLogin:
    override = app.imap if side == "imap" else app.smtp
    if override is not None:
        host, port, tls = override.host, override.port, override.tls
    else:
        assert preset is not None, "OAuth2 presets have servers"
        host, port, tls = preset.host, preset.port, preset.tls
    return ServerLogin(
        host=host, port=port, tls=tls, username=address, password="", access_token=token
    )


async def callback(
    context: SyncContext,
    code: str | None,
    state: str | None,
    error: str | None,
    caller: Identity | None,
) -> uuid.UUID | HandOff:
    """The provider's answer: with a key (``caller``, R1) the mailbox id once connected; without, a
    hand-off."""
    if not state:
        raise OAuthStateInvalid("the sign-in answer carries no state; start again from Mail Sync")
    pending = await _take(context, state, handed_off=False)
    if caller is not None:
        _starter_only(pending, caller)
    preset, _ = app_for(context, pending.provider)
    if error is not None or not code:
        raise OAuthProviderError(
            (
                f"{preset.name} did not let Leadline in ({(error or 'no code')[:64]}); start again "
                f"from Mail Sync"
            ),
        )
    if caller is None:
        return await _hand_off(context, pending, code)
    return await _complete(context, pending, code)


async def finish(context: SyncContext, caller: Identity, sign_in: str) -> uuid.UUID:
    """Finish a sign-in the callback handed back; only its starter may (R1).  Returns the mailbox
    id."""
    pending = await _take(context, sign_in, handed_off=True)
    _starter_only(pending, caller)
    return await _complete(context, pending, pending.code)


async def _complete(context: SyncContext, pending: PendingSignIn, code: str) -> uuid.UUID:
    preset, app = app_for(context, pending.provider)
    try:
        tokens = await context.endpoint.exchange_code(app, code, pending.verifier)
    except TokenRefused as exc:
        raise OAuthProviderError(
            f"{preset.name} refused the sign-in ({exc.error}); start again from Mail Sync"
        ) from None
    except TokenEndpointUnavailable:
        raise OAuthProviderUnavailable(
            f"{preset.name}'s sign-in service did not answer; start again from Mail Sync",
        ) from None
    if tokens.refresh_token is None:
        raise OAuthProviderError(
            (
                f"{preset.name} gave no refresh token, so Leadline could not keep syncing; start "
                f"again from Mail Sync"
            ),
        )
    address = await _proven_address(context, app, tokens, pending.nonce)
    imap = _login("imap", preset.imap, app, address, tokens.access_token)
    smtp = _login("smtp", preset.smtp, app, address, tokens.access_token)
    imap_checked, smtp_checked, sent_folder = await check_logins(context, imap, smtp)
    return await save(
        context,
        pending.company_id,
        pending.user_id,
        CheckedMailbox(
            provider=preset,
            address=address,
            smtp_use=pending.smtp_use,
            imap=imap_checked,
            smtp=smtp_checked,
            sent_folder=sent_folder,
            auth="oauth2",
            oauth_expires_at=tokens.expires_at,
            address_proven_by="provider",
            secrets=MailboxSecrets(
                imap_password="",
                smtp_password="",
                refresh_token=tokens.refresh_token,
                access_token=tokens.access_token,
            ),
        ),
    )
