"""Provider apps (operator settings): the OAuth2 clients Leadline signs users in with, per preset.

``LEADLINE_SYNC_OAUTH_APPS`` is a JSON object keyed by preset (``gmail``,
``office365``, ``outlook``): the client id, the client secret *sealed* under
the credential keys (R25; ``python -m leadline_sync.oauth.apps seal PROVIDER``
reads the secret on stdin and prints the value to set), the redirect URL
registered with the provider (the gateway's ``/v1/mail-sync/oauth/callback``, or
a page of the CRM that passes the answer on to it with the user's key), the
CRM page that finishes a sign-in (``return_url``, when the redirect is Leadline's own),
the Microsoft tenant, and optionally other endpoint URLs and IMAP/SMTP servers
(the tests point them at a local authorization server and Dovecot).  The
sealed secret binds the preset's name, so it cannot be moved to another one.
After a key rotation, seal the secret again under the new key.

Scopes (least privilege): Gmail ``https://mail.google.com/`` (IMAP and SMTP
both need this one scope); Microsoft ``https://outlook.office.com/IMAP.AccessAsUser.All``
(IMAP), ``https://outlook.office.com/SMTP.Send`` (SMTP AUTH) and
``offline_access`` (a refresh token); with ``openid email`` on both for the
ID token that names the account.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import re
import sys
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from leadline_kit.sealing import CredentialError, KeyRing, Sealed

OAuthProvider = Literal["gmail", "office365", "outlook"]


class ServerOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = Field(ge=1, le=65535)
    tls: Literal["implicit", "starttls", "plain"]


class OAuthAppSettings(BaseModel):
    """One provider app as the operator configures it; unset URLs are the provider's real ones."""

    model_config = ConfigDict(extra="forbid")

    client_id: str = Field(min_length=1)
    client_secret_sealed: str = Field(min_length=1, repr=False)
    redirect_url: str = Field(min_length=1)
    # the CRM's page that finishes a sign-in with the user's key when the redirect URL is Leadline's
    # own callback: the browser is sent there with ``?sign_in=`` (see leadline_sync.oauth.flow)
    return_url: str | None = Field(None, pattern=r"^https?://")
    # Microsoft: common, organizations, an id
    tenant: str = Field("common", pattern=r"^[A-Za-z0-9.\-]{1,100}$")
    authorization_url: str | None = None
    token_url: str | None = None
    userinfo_url: str | None = None
    # the ID token's "iss" must be this when set; ``{tid}`` stands for the token's directory
    # (Microsoft)
    issuer: str | None = None
    imap: ServerOverride | None = None
    smtp: ServerOverride | None = None


@dataclass(frozen=True)
class ProviderDefaults:
    authorization_url: str
    token_url: str
    userinfo_url: str | None
    issuer: str | None
    scopes: tuple[str, ...]
    extra: tuple[tuple[str, str], ...]  # further authorization request parameters


_MICROSOFT = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"  # {tenant}: the app's
_MICROSOFT_ISSUER = "https://login.microsoftonline.com/{tid}/v2.0"
_DIRECTORY_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MICROSOFT_SCOPES = (
    "openid",
    "email",
    "offline_access",
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
)
_MICROSOFT_DEFAULTS = ProviderDefaults(
    authorization_url=f"{_MICROSOFT}/authorize",
    token_url=f"{_MICROSOFT}/token",
    userinfo_url=None,
    issuer=_MICROSOFT_ISSUER,
    scopes=_MICROSOFT_SCOPES,
    extra=(("prompt", "select_account"),),
)
DEFAULTS: dict[str, ProviderDefaults] = {
    "gmail": ProviderDefaults(
        authorization_url="https://accounts.google.com/o/oauth2/v2/auth",
        token_url="https://oauth2.googleapis.com/token",  # noqa: S106 - a URL, not a password
        userinfo_url="https://openidconnect.googleapis.com/v1/userinfo",
        issuer="https://accounts.google.com",
        scopes=("openid", "email", "https://mail.google.com/"),
        # a refresh token is given only with offline access, and again on a new sign-in only with
        # consent
        extra=(("access_type", "offline"), ("prompt", "consent")),
    ),
    # Microsoft's issuer names the user's directory (``tid``; one fixed id when the tenant is one),
    # and its userinfo endpoint wants a Graph token: the ID token, received straight from the token
    # endpoint over TLS, names the account.
    "office365": _MICROSOFT_DEFAULTS,
    "outlook": _MICROSOFT_DEFAULTS,
}


@dataclass(frozen=True)
class OAuthApp:
    """A provider app ready to use: URLs resolved, client secret opened."""

    provider: str
    client_id: str
    client_secret: str
    redirect_url: str
    return_url: str | None
    authorization_url: str
    token_url: str
    userinfo_url: str | None
    issuer: str | None
    scopes: tuple[str, ...]
    extra: tuple[tuple[str, str], ...]
    imap: ServerOverride | None
    smtp: ServerOverride | None

    def __repr__(self) -> str:
        return f"OAuthApp({self.provider!r}, client_id={self.client_id!r})"


def _associated(provider: str) -> bytes:
    return f"leadline-sync-oauth-client-secret:{provider}".encode()


def seal_client_secret(ring: KeyRing, provider: str, secret: str) -> str:
    sealed = ring.seal(secret.encode(), _associated(provider))
    parts = (base64.urlsafe_b64encode(p).decode() for p in (sealed.wrapped_key, sealed.ciphertext))
    return ".".join((sealed.key_id, *parts))


def open_client_secret(ring: KeyRing, provider: str, value: str) -> str:
    key_id, _, rest = value.partition(".")
    wrapped, _, ciphertext = rest.partition(".")
    try:
        sealed = Sealed(
            key_id, base64.urlsafe_b64decode(wrapped), base64.urlsafe_b64decode(ciphertext)
        )
    except (binascii.Error, ValueError):
        raise CredentialError("the sealed client secret is malformed") from None
    return ring.open(sealed, _associated(provider)).decode()


def resolve_apps(configured: dict[str, OAuthAppSettings], ring: KeyRing) -> dict[str, OAuthApp]:
    """Every configured app with its secret opened; ValueError (at start-up) for one that does not
    open."""
    apps: dict[str, OAuthApp] = {}
    for provider, app in configured.items():
        defaults = DEFAULTS.get(provider)
        if defaults is None:
            raise ValueError(
                f"LEADLINE_SYNC_OAUTH_APPS: {provider!r} is not an OAuth2 preset (one of "
                f"{', '.join(DEFAULTS)})"
            )
        try:
            secret = open_client_secret(ring, provider, app.client_secret_sealed)
        except CredentialError as exc:
            raise ValueError(
                f"LEADLINE_SYNC_OAUTH_APPS: the client secret of {provider!r} does not open: "
                f"{exc}. "
                "Seal it with python -m leadline_sync.oauth.apps seal"
            ) from None

        issuer = app.issuer or defaults.issuer
        if issuer is not None and _DIRECTORY_ID.match(app.tenant.lower()):
            issuer = issuer.replace("{tid}", app.tenant.lower())  # one directory: only its tokens
        apps[provider] = OAuthApp(
            provider=provider,
            client_id=app.client_id,
            client_secret=secret,
            redirect_url=app.redirect_url,
            return_url=app.return_url,
            # ``{tenant}`` in a URL, configured or Microsoft's, is the app's tenant
            authorization_url=(app.authorization_url or defaults.authorization_url).replace(
                "{tenant}", app.tenant
            ),
            token_url=(app.token_url or defaults.token_url).replace("{tenant}", app.tenant),
            userinfo_url=app.userinfo_url or defaults.userinfo_url,
            issuer=issuer,
            scopes=defaults.scopes,
            extra=defaults.extra,
            imap=app.imap,
            smtp=app.smtp,
        )
    return apps


def main() -> None:
    from leadline_sync.config import Settings

    parser = argparse.ArgumentParser(
        prog="python -m leadline_sync.oauth.apps",
        description="Seal a provider app's client secret for LEADLINE_SYNC_OAUTH_APPS.",
    )
    parser.add_argument("action", choices=["seal"])
    parser.add_argument("provider", choices=sorted(DEFAULTS))
    args = parser.parse_args()
    secret = (
        getpass.getpass("client secret: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    )
    print(seal_client_secret(KeyRing(Settings().credential_keys()), args.provider, secret))


if __name__ == "__main__":
    main()
