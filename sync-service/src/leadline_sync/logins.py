"""Checking a user's IMAP and SMTP settings the way the sync and the send service will use them.

Both checks vet the host first (R24: resolved once, private ranges refused
unless the operator allows them, connection to the vetted address) and never
send a password over an unencrypted or unverified connection: "use SSL" off
means STARTTLS is required, plaintext only where the operator allows it
(R22), and a self-signed certificate is trusted only by the SHA-256
fingerprint pinned at connect time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiosmtplib

from leadline_mail.imap import ImapSettings, connect_imap
from leadline_mail.net import (
    ErrorKind,
    MailConnectionError,
    TlsMode,
    client_tls_context,
    connect_error,
    fetch_certificate_sha256,
    normalize_fingerprint,
    verify_pin,
    vet_host,
)
from leadline_sync.config import Settings


@dataclass(frozen=True)
class ServerLogin:
    host: str
    port: int
    tls: TlsMode
    username: str
    password: str
    pinned_sha256: str | None = None
    # OAuth2: signs in with this (XOAUTH2 / OAUTHBEARER) instead of the password
    access_token: str | None = None

    def __repr__(self) -> str:
        return f"ServerLogin({self.username!r}@{self.host}:{self.port}, {self.tls})"


def imap_settings(login: ServerLogin, settings: Settings) -> ImapSettings:
    return ImapSettings(
        host=login.host,
        port=login.port,
        tls=login.tls,
        username=login.username,
        password=login.password,
        access_token=login.access_token,
        pinned_sha256=login.pinned_sha256,
        cafile=settings.sync_ca_file,
        allow_networks=tuple(settings.allow_networks()),
        allow_plaintext=settings.sync_allow_plaintext,
        timeout=settings.sync_imap_timeout,
    )


async def certificate_pin(
    login: ServerLogin, protocol: str, expected: str | None, settings: Settings
) -> str:
    """The fingerprint to pin for a self-signed server; ``expected`` (if the user gave one) must
    match."""
    vetted = await vet_host(login.host, settings.allow_networks())
    seen = await fetch_certificate_sha256(
        vetted,
        login.port,
        login.tls,
        "imap" if protocol == "imap" else "smtp",
        timeout=settings.sync_imap_timeout,
    )
    if expected is not None and not hmac.compare_digest(normalize_fingerprint(expected), seen):
        raise MailConnectionError(
            ErrorKind.TLS,
            "The server's certificate does not have the fingerprint you entered. "
            "Check the fingerprint with your mail administrator.",
        )
    return seen


async def check_imap(login: ServerLogin, settings: Settings) -> str | None:
    """Log in over IMAP; returns the Sent folder's name (None when the mailbox has none)."""
    client = await connect_imap(imap_settings(login, settings))
    try:
        folders = await client.find_sync_folders()
    finally:
        await client.logout()
    return folders.get("sent")


async def check_smtp(login: ServerLogin, settings: Settings) -> None:
    """Log in over SMTP (EHLO, TLS as configured, AUTH) and quit without sending."""
    async with smtp_session(login, settings):
        pass


@contextlib.asynccontextmanager
async def smtp_session(login: ServerLogin, settings: Settings) -> AsyncIterator[aiosmtplib.SMTP]:  # noqa: C901 - 16, older than the limit
    """An SMTP session logged in as ``login`` (EHLO, TLS as configured, AUTH); QUIT when it ends.

    Failures to connect, secure or log in are :class:`MailConnectionError`; what the body of the
    ``async with`` raises passes through as it is.
    """
    vetted = await vet_host(login.host, settings.allow_networks())
    timeout = settings.sync_imap_timeout
    if login.tls == "plain" and not settings.sync_allow_plaintext:
        raise MailConnectionError(
            ErrorKind.TLS, "This server would receive your password unencrypted. Turn on SSL."
        )
    family = socket.AF_INET6 if ":" in vetted.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (vetted.address, login.port))
    except (OSError, TimeoutError) as exc:
        sock.close()
        raise connect_error(exc, vetted, login.port) from None
    context = client_tls_context(pinned_sha256=login.pinned_sha256, cafile=settings.sync_ca_file)
    smtp = aiosmtplib.SMTP(
        hostname=vetted.hostname,
        sock=sock,
        timeout=timeout,
        use_tls=login.tls == "implicit",
        start_tls=False,
        tls_context=context,
    )
    try:
        try:
            await smtp.connect()
            await smtp.ehlo()
            if login.tls == "starttls":
                if smtp.supports_extension("starttls"):
                    await smtp.starttls(tls_context=context, server_hostname=vetted.hostname)
                elif not settings.sync_allow_plaintext:
                    raise MailConnectionError(
                        ErrorKind.TLS,
                        "The SMTP server does not offer STARTTLS on this port, so your password "
                        "would travel unencrypted. Turn on SSL or use another port.",
                    )
            ssl_object = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
            if ssl_object is not None:
                verify_pin(ssl_object, login.pinned_sha256)
            if login.access_token is not None:
                await smtp.auth_xoauth2(login.username, login.access_token)
            else:
                await smtp.login(login.username, login.password)
        except aiosmtplib.SMTPAuthenticationError:
            if login.access_token is not None:
                raise MailConnectionError(
                    ErrorKind.OAUTH_REFUSED,
                    "The SMTP server refused the sign-in with your account.",
                ) from None
            raise MailConnectionError(
                ErrorKind.AUTH_FAILED, "The SMTP server refused the user name or password."
            ) from None
        except aiosmtplib.SMTPNotSupported as exc:
            raise MailConnectionError(
                ErrorKind.PROTOCOL,
                "The SMTP server does not accept a login on this port.",
                detail=str(exc),
            ) from None
        except aiosmtplib.SMTPTimeoutError:
            raise connect_error(TimeoutError(), vetted, login.port) from None
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, OSError) as exc:
            raise connect_error(exc, vetted, login.port) from None
        except aiosmtplib.SMTPException as exc:
            raise MailConnectionError(
                ErrorKind.PROTOCOL, "The SMTP server answered unexpectedly.", detail=str(exc)
            ) from None
        yield smtp
    finally:
        if smtp.is_connected:
            try:
                await smtp.quit()
            except aiosmtplib.SMTPException:
                smtp.close()
