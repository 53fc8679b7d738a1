"""Where a mail connection may go (R24) and how its TLS is checked (R22).

Host vetting.  A user types a mail host; we resolve it exactly once, refuse it
unless *every* address it resolves to is a public unicast address (or lies in
an operator allow-list), and then connect to the vetted address itself.  The
host name is used only for SNI and certificate checks, so a DNS answer that
changes between the check and the connection (DNS rebinding) cannot steer us
to an internal address.  Callers vet again on every reconnect.

Refused unless allowed: loopback, RFC 1918 private, link-local (this includes
the cloud metadata address 169.254.169.254), CGNAT 100.64/10, ULA fc00::/7,
multicast, unspecified, reserved and documentation ranges, and every IPv6 form
that carries an IPv4 address a router or the kernel may translate to an
internal IPv4 host: IPv4-mapped ``::ffff:0:0/96``, IPv4-compatible ``::/96``,
6to4 ``2002::/16``, NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``, Teredo.
A refused host gets the same answer, word for word, as a name that does not
resolve, so that the answer does not map which internal names exist.

TLS.  Without a pin, certificates are verified normally (system CAs, or a
``cafile``) including the host name.  A user who ticks "self-signed
certificate" pins the SHA-256 fingerprint of the server's leaf certificate
(shown to them by :func:`fetch_certificate_sha256`); then chain verification
is off and :func:`verify_pin` compares the fingerprint right after the
handshake, before any credential is sent.  Verification is never simply
turned off.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
TlsMode = Literal["implicit", "starttls", "plain"]


class ErrorKind(StrEnum):
    """Every kind of mailbox error: each has a fix in the user's words (sync's
    ``mailbox/fixes.py``).

    The first kinds are a connection's, raised as :class:`MailConnectionError` by the IMAP and SMTP
    clients and the OAuth2 token calls; the rest are recorded in a mailbox's error log by the sync.
    """

    AUTH_FAILED = "auth_failed"
    TLS = "tls"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    PROTOCOL = "protocol"
    NOT_ALLOWED = "not_allowed"
    IMAP_DISABLED = "imap_disabled"
    OAUTH_REFUSED = "oauth_refused"  # the mail server refused an access token
    OAUTH_REVOKED = "oauth_revoked"  # the provider refused to renew one (invalid_grant)
    # the provider's token endpoint did not answer (retried)
    OAUTH_UNAVAILABLE = "oauth_unavailable"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    # recorded by the sync, never raised by a client
    ADDRESS_UNPROVEN = "address_unproven"
    ADDRESS_TAKEN = "address_taken"
    CREDENTIALS_UNREADABLE = "credentials_unreadable"
    MAILBOX_LIMIT_UNAVAILABLE = "mailbox_limit_unavailable"
    CONNECTION_FAILED = "connection_failed"
    PLAN_LIMIT = "plan_limit"
    MESSAGE_UNREADABLE = "message_unreadable"
    LEADS_BEHIND = "leads_behind"
    AUDIT_REPAIRED = "audit_repaired"
    FOLDER_RESET = "folder_reset"
    FOLDER_RESET_LIMIT = "folder_reset_limit"


Resolver = Callable[[str], Awaitable[Sequence[str]]]
"""Resolves a host name (IDNA-encoded ASCII) to IP address strings; injectable for tests."""


class MailConnectionError(Exception):
    """A mail server could not be used; ``user_message`` says why in the user's words and how to fix
    it.

    ``detail`` carries the technical cause for logs (never a credential).
    """

    def __init__(self, kind: ErrorKind, user_message: str, *, detail: str = "") -> None:
        super().__init__(user_message)
        self.kind: ErrorKind = kind
        self.user_message = user_message
        self.detail = detail

    def __repr__(self) -> str:
        return f"MailConnectionError(kind={self.kind!r}, user_message={self.user_message!r})"


# Ranges that embed or translate to an IPv4 address, or are otherwise never a mail server.
# ``is_global`` alone lets some of these through (IPv4-mapped, 6to4, NAT64 are "global" to it).
_NEVER_GLOBAL: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "192.0.0.0/24",
        "192.88.99.0/24",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/96",
        "::ffff:0:0/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "2001::/32",
        "2002::/16",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)


def parse_allowlist(spec: str) -> list[IPNetwork]:
    """``"127.0.0.0/8, ::1/128"`` → networks; empty entries ignored, a bad entry raises
    ValueError."""
    networks: list[IPNetwork] = []
    for part in spec.replace(";", ",").split(","):
        part = part.strip()
        if part:
            networks.append(ipaddress.ip_network(part, strict=False))
    return networks


@dataclass(frozen=True)
class VettedHost:
    """A host name together with the one address it was vetted to; connect to ``address``."""

    hostname: str
    address: str


def is_public_address(address: IPAddress) -> bool:
    """True for a unicast address on the public internet that embeds no other address."""
    if (
        not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    ):
        return False
    return not any(address.version == net.version and address in net for net in _NEVER_GLOBAL)


def _allowed(address: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in allow)


_BAD_NAME = "'{}' is not a valid server name. Check the host name."
# One answer for a name that does not resolve and one that resolves to a refused address: a caller
# must not learn from us which internal names exist (the detail, logged only, tells them apart).
_NOT_FOUND = (
    "The server name '{}' could not be found or is not a public mail server. Check the host name: "
    "use your mail provider's public server name."
)
NO_STARTTLS = "The server does not offer STARTTLS on this port. Turn on SSL or use another port."
_HOST_RE = re.compile(r"^[A-Za-z0-9._-]{1,253}$")


def _ascii_hostname(hostname: str) -> str:
    host = hostname.strip().rstrip(".").lower()
    if not host:
        raise MailConnectionError(ErrorKind.UNREACHABLE, _BAD_NAME.format(hostname))
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise MailConnectionError(
            ErrorKind.UNREACHABLE, _BAD_NAME.format(hostname), detail=str(exc)
        ) from None
    if not _HOST_RE.match(host) and not _is_ip_literal(host):
        raise MailConnectionError(ErrorKind.UNREACHABLE, _BAD_NAME.format(hostname))
    return host


def _is_ip_literal(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True


async def system_resolver(hostname: str) -> list[str]:
    """Every address the system resolver gives for ``hostname`` (TCP)."""
    infos = await asyncio.get_running_loop().getaddrinfo(hostname, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def vet_host(
    hostname: str,
    allow: Sequence[IPNetwork] = (),
    *,
    resolver: Resolver | None = None,
    timeout: float = 15.0,
) -> VettedHost:
    """Resolve ``hostname`` once and return the address to connect to (R24).

    Every resolved address must be public or inside ``allow``; one bad answer
    among good ones refuses the host, since a later resolution could pick it.
    """
    host = _ascii_hostname(hostname)
    if _is_ip_literal(host):
        # "[::1]" → "::1": brackets belong in URLs, not in SNI or certificate checks
        host = host.strip("[]")
        answers: Sequence[str] = [host]
    else:
        try:
            async with asyncio.timeout(timeout):
                answers = await (resolver or system_resolver)(host)
        except TimeoutError:
            raise MailConnectionError(
                ErrorKind.TIMEOUT,
                f"Looking up '{host}' took too long. Try again later or check the host name.",
            ) from None
        except (OSError, UnicodeError) as exc:
            raise MailConnectionError(
                ErrorKind.UNREACHABLE, _NOT_FOUND.format(host), detail=str(exc)
            ) from None
    if not answers:
        raise MailConnectionError(ErrorKind.UNREACHABLE, _NOT_FOUND.format(host))
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            # A scope id ("fe80::1%eth0") only ever belongs to link-local addresses, refused below
            # anyway.
            addresses.append(ipaddress.ip_address(answer.split("%", 1)[0]))
        except ValueError:
            raise MailConnectionError(
                ErrorKind.UNREACHABLE,
                _NOT_FOUND.format(host),
                detail=f"resolved to an invalid address {answer!r}",
            ) from None
    for address in addresses:
        if not (_allowed(address, allow) or is_public_address(address)):
            raise MailConnectionError(
                ErrorKind.UNREACHABLE,
                _NOT_FOUND.format(host),
                detail=f"resolved to {address}, neither public nor allowed",
            )
    return VettedHost(hostname=host, address=str(addresses[0]))


# --- TLS ---------------------------------------------------------------------------


def normalize_fingerprint(value: str) -> str:
    """``"AB:CD:..."``, ``"sha256:abcd..."`` or plain hex → 64 lower-case hex digits; ValueError
    otherwise."""
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    text = text.replace(":", "").replace(" ", "")
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError("a SHA-256 fingerprint is 64 hexadecimal digits")
    return text


def client_tls_context(
    *, pinned_sha256: str | None = None, cafile: str | None = None
) -> ssl.SSLContext:
    """A client context: normal verification, or (pinned) chain checks replaced by
    :func:`verify_pin`.

    Shared by every connection of the same kind and CA file (never changed after it is made):
    loading the system CA store costs about 25 ms a context and a CA file 0.5 ms, which thousands of
    mailboxes connecting at once (a replica taking over, a server restarted) paid in event-loop time
    each.  A CA file changed on disk is read again."""
    if pinned_sha256 is not None:
        normalize_fingerprint(pinned_sha256)  # refuse a malformed pin before connecting anywhere
    return _shared_context(
        pinned_sha256 is not None, cafile, os.stat(cafile).st_mtime_ns if cafile else None
    )


@functools.lru_cache(maxsize=16)
def _shared_context(pinned: bool, cafile: str | None, cafile_changed: int | None) -> ssl.SSLContext:
    if pinned:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def certificate_sha256(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise MailConnectionError(ErrorKind.TLS, "The server sent no TLS certificate.")
    return hashlib.sha256(der).hexdigest()


def verify_pin(ssl_object: ssl.SSLObject | ssl.SSLSocket, pinned_sha256: str | None) -> None:
    """Check the peer's leaf certificate against the pin (no-op without a pin)."""
    if pinned_sha256 is None:
        return
    expected = normalize_fingerprint(pinned_sha256)
    seen = certificate_sha256(ssl_object)
    if not hmac.compare_digest(seen, expected):
        raise MailConnectionError(
            ErrorKind.TLS,
            "The server's certificate is not the one you trusted: it has changed since you "
            "connected. If your provider replaced it, confirm the new certificate fingerprint; "
            "otherwise someone may be intercepting the connection.",
            detail=f"expected {expected}, got {seen}",
        )


def tls_error(exc: BaseException) -> MailConnectionError:
    """Map a handshake failure to the user's words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return MailConnectionError(
            ErrorKind.TLS,
            "The server's TLS certificate could not be verified (self-signed, expired or for "
            "another host "
            'name). If your server uses a self-signed certificate, tick "self-signed certificate"; '
            "otherwise check the host name.",
            detail=str(exc),
        )
    return MailConnectionError(
        ErrorKind.TLS,
        "The secure (TLS) connection failed. Check the port and the SSL setting.",
        detail=str(exc),
    )


def connect_error(exc: BaseException, host: VettedHost, port: int) -> MailConnectionError:
    """Map a failure to open a TCP/TLS connection to the user's words."""
    if isinstance(exc, TimeoutError):
        return MailConnectionError(
            ErrorKind.TIMEOUT,
            (
                f"{host.hostname}:{port} did not answer in time. Check the host, the port and your "
                f"firewall."
            ),
        )
    if isinstance(exc, ssl.SSLError):
        return tls_error(exc)
    return MailConnectionError(
        ErrorKind.UNREACHABLE,
        f"Could not connect to {host.hostname}:{port}. Check the host name and the port.",
        detail=str(exc),
    )


async def _read_reply(
    reader: asyncio.StreamReader, protocol: Literal["imap", "smtp"], tag: bytes
) -> bytes:
    """Read up to the line that completes a reply: IMAP ``tag ...``, SMTP a line ``NNN `` (not
    ``NNN-``)."""
    while True:
        line = await reader.readline()
        if not line:
            raise MailConnectionError(
                ErrorKind.PROTOCOL, "The server closed the connection during STARTTLS."
            )
        if protocol == "imap" and line.startswith(tag + b" "):
            return line
        if protocol == "smtp" and len(line) >= 4 and line[3:4] != b"-":
            return line


def buffered_bytes(reader: asyncio.StreamReader) -> int:
    """How many received bytes wait in ``reader``; StreamReader exposes no public count."""
    buffer: bytearray = getattr(reader, "_buffer")  # noqa: B009 - private by name only, stable since 3.4
    return len(buffer)


async def upgrade_to_tls(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
    host: VettedHost,
    handshake_timeout: float,
) -> None:
    """Switch a connection to TLS after the server accepted STARTTLS.

    Bytes received before the handshake are plaintext an attacker may have
    injected (they would be read as if they came over TLS): their presence
    refuses the connection, checked before and after the handshake.
    """
    if buffered_bytes(reader):
        raise MailConnectionError(
            ErrorKind.TLS,
            (
                "The server sent unexpected data during STARTTLS; the connection was refused as "
                "unsafe."
            ),
        )
    try:
        await writer.start_tls(
            context, server_hostname=host.hostname, ssl_handshake_timeout=handshake_timeout
        )
    except (ssl.SSLError, ConnectionError) as exc:
        raise tls_error(exc) from None
    if buffered_bytes(reader):
        raise MailConnectionError(
            ErrorKind.TLS,
            (
                "The server sent unexpected data during STARTTLS; the connection was refused as "
                "unsafe."
            ),
        )


async def fetch_certificate_sha256(
    host: VettedHost,
    port: int,
    tls: TlsMode,
    protocol: Literal["imap", "smtp"],
    timeout: float = 15,
) -> str:
    """The SHA-256 fingerprint (lower-case hex) of the server's leaf certificate, to show and
    pin."""
    if tls == "plain":
        raise MailConnectionError(
            ErrorKind.TLS, "A connection without SSL/TLS has no certificate to trust."
        )
    # chain checks off: we only look at the certificate
    context = client_tls_context(pinned_sha256="0" * 64)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                if tls == "implicit":
                    reader, writer = await asyncio.open_connection(
                        host.address,
                        port,
                        ssl=context,
                        server_hostname=host.hostname,
                        ssl_handshake_timeout=timeout,
                    )
                else:
                    reader, writer = await asyncio.open_connection(host.address, port)
                    await _read_reply(reader, protocol, b"*" if protocol == "imap" else b"")
                    if protocol == "imap":
                        writer.write(b"F1 STARTTLS\r\n")
                        reply = await _read_reply(reader, "imap", b"F1")
                        ok = reply.upper().startswith(b"F1 OK")
                    else:
                        writer.write(b"EHLO leadline.invalid\r\n")
                        await _read_reply(reader, "smtp", b"")
                        writer.write(b"STARTTLS\r\n")
                        ok = (await _read_reply(reader, "smtp", b"")).startswith(b"220")
                    if not ok:
                        raise MailConnectionError(ErrorKind.TLS, NO_STARTTLS)
                    await upgrade_to_tls(reader, writer, context, host, timeout)
            except (OSError, ssl.SSLError) as exc:
                raise connect_error(exc, host, port) from None
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is None:
                raise MailConnectionError(ErrorKind.TLS, "The server did not start TLS.")
            return certificate_sha256(ssl_object)
    except TimeoutError:
        raise connect_error(TimeoutError(), host, port) from None
    finally:
        if writer is not None:
            writer.close()
