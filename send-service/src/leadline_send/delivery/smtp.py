"""Opening an SMTP session safely (R22, R24) and classifying what the server answered.

The TLS mode is always explicit: ``implicit`` (TLS from the first byte),
``starttls`` (STARTTLS required: a server that does not offer it gets no AUTH
and no mail) or ``plain`` (only when the operator allows plaintext).
aiosmtplib's default, which quietly stays in plaintext when STARTTLS is
missing, is never used.  The host is vetted once per connection and the socket
goes to the vetted address; the host name serves only SNI and the certificate
check.  A pinned certificate (self-signed) is compared before AUTH.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib

from leadline_mail.net import (
    IPNetwork,
    MailConnectionError,
    TlsMode,
    client_tls_context,
    connect_error,
    tls_error,
    verify_pin,
    vet_host,
)


@dataclass(frozen=True)
class SmtpEndpoint:
    host: str
    port: int
    tls: TlsMode
    username: str = ""
    password: str = ""
    pinned_sha256: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class SmtpPolicy:
    """Operator settings every connection obeys."""

    allow_networks: Sequence[IPNetwork] = ()
    allow_plaintext: bool = False
    cafile: str | None = None
    local_hostname: str = "leadline.localhost"


@functools.lru_cache(maxsize=256)
def tls_context(pinned_sha256: str | None, cafile: str | None) -> ssl.SSLContext:
    """Contexts are shared by every connection with the same pin and CA file: loading the system CA
    store for each new session costs tens of milliseconds."""
    return client_tls_context(pinned_sha256=pinned_sha256, cafile=cafile)


async def open_socket(endpoint: SmtpEndpoint, policy: SmtpPolicy) -> tuple[socket.socket, str]:
    """A TCP connection to the vetted address of the endpoint's host; returns it with the host name."""
    vetted = await vet_host(endpoint.host, policy.allow_networks)
    family = socket.AF_INET6 if ":" in vetted.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(endpoint.timeout):
            await asyncio.get_running_loop().sock_connect(sock, (vetted.address, endpoint.port))
    except (OSError, TimeoutError) as exc:
        sock.close()
        raise connect_error(exc, vetted, endpoint.port) from None
    return sock, vetted.hostname


async def open_session(endpoint: SmtpEndpoint, policy: SmtpPolicy) -> aiosmtplib.SMTP:
    """Connected, TLS as configured, pin checked, authenticated; ready for MAIL FROM."""
    if endpoint.tls == "plain" and not policy.allow_plaintext:
        raise MailConnectionError("tls", "This server would be used without TLS, which is not allowed here. "
                                         "Turn on SSL/TLS or use the STARTTLS port (usually 587).")
    context = None if endpoint.tls == "plain" else tls_context(endpoint.pinned_sha256, policy.cafile)
    sock, hostname = await open_socket(endpoint, policy)
    smtp = aiosmtplib.SMTP(hostname=hostname, sock=sock, use_tls=endpoint.tls == "implicit", start_tls=False,
                           tls_context=context, timeout=endpoint.timeout, local_hostname=policy.local_hostname)
    try:
        try:
            await smtp.connect()
        except aiosmtplib.SMTPConnectError as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLError):
                raise tls_error(cause) from None
            raise
        if endpoint.tls == "starttls":
            await smtp.ehlo()
            if not smtp.supports_extension("starttls"):
                raise MailConnectionError("tls", "The server does not offer STARTTLS on this port, so nothing "
                                                 "was sent. Turn on SSL/TLS or use another port.")
            try:
                await smtp.starttls(server_hostname=hostname, tls_context=context)
            except ssl.SSLError as exc:
                raise tls_error(exc) from None
        if endpoint.tls != "plain":
            ssl_object = smtp.get_transport_info("ssl_object")
            if ssl_object is None:
                raise MailConnectionError("tls", "The server did not start TLS.")
            verify_pin(ssl_object, endpoint.pinned_sha256)
        if endpoint.username:
            try:
                await smtp.login(endpoint.username, endpoint.password)
            except aiosmtplib.SMTPAuthenticationError as exc:
                raise MailConnectionError("auth_failed", "The SMTP server refused the user name or password. "
                                          "Update the password.", detail=str(exc)) from None
    except BaseException:
        smtp.close()
        raise
    return smtp


async def probe_endpoint(host: str, port: int, timeout: float, policy: SmtpPolicy) -> None:
    """"Test connection" (R15): host and port only, no TLS, no credentials."""
    sock, _ = await open_socket(SmtpEndpoint(host=host, port=port, tls="plain", timeout=timeout), policy)
    sock.close()


def reply_text(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}"
