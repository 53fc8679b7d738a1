"""Opening an SMTP session safely (R22, R24) and speaking its mail transactions.

The TLS mode is always explicit: ``implicit`` (TLS from the first byte),
``starttls`` (STARTTLS required: a server that does not offer it gets no AUTH
and no mail) or ``plain`` (only when the operator allows plaintext).
aiosmtplib's default, which quietly stays in plaintext when STARTTLS is
missing, is never used.  The host is vetted once per connection and the socket
goes to the vetted address; the host name serves only SNI and the certificate
check.  A pinned certificate (self-signed) is compared before AUTH.

aiosmtplib opens the session (connect, TLS, pin, EHLO, AUTH); the delivery
workers then speak its transactions through ``SmtpChannel`` on the same
transport.  aiosmtplib reads one reply per command and drops what arrives while
a parsed reply waits to be picked up, so it cannot pipeline; the channel keeps
every reply in order.  With PIPELINING (RFC 2920), which every large provider
offers, MAIL FROM, the RCPT TOs and DATA go out in one write: one round trip
where they were 2 + recipients.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import (
    COMMAND_INJECTION_REGEX,
    PERIOD_REGEX,
    normalize_message_line_endings,
)

from leadline_mail.net import (
    ErrorKind,
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
    password: str = field(default="", repr=False)
    pinned_sha256: str | None = None
    timeout: float = 30.0
    # OAuth2: AUTH XOAUTH2 instead of the password
    access_token: str | None = field(default=None, repr=False)


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
    """A TCP connection to the vetted address of the endpoint's host; returns it with the host
    name."""
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


async def open_session(endpoint: SmtpEndpoint, policy: SmtpPolicy) -> aiosmtplib.SMTP:  # noqa: C901 - 14, older than the limit
    """Connected, TLS as configured, pin checked, authenticated; ready for MAIL FROM."""
    if endpoint.tls == "plain" and not policy.allow_plaintext:
        raise MailConnectionError(
            ErrorKind.TLS,
            "This server would be used without TLS, which is not allowed here. "
            "Turn on SSL/TLS or use the STARTTLS port (usually 587).",
        )
    context = (
        None if endpoint.tls == "plain" else tls_context(endpoint.pinned_sha256, policy.cafile)
    )
    sock, hostname = await open_socket(endpoint, policy)
    smtp = aiosmtplib.SMTP(
        hostname=hostname,
        sock=sock,
        use_tls=endpoint.tls == "implicit",
        start_tls=False,
        tls_context=context,
        timeout=endpoint.timeout,
        local_hostname=policy.local_hostname,
    )
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
                raise MailConnectionError(
                    ErrorKind.TLS,
                    "The server does not offer STARTTLS on this port, so nothing "
                    "was sent. Turn on SSL/TLS or use another port.",
                )
            try:
                await smtp.starttls(server_hostname=hostname, tls_context=context)
            except ssl.SSLError as exc:
                raise tls_error(exc) from None
        if endpoint.tls != "plain":
            ssl_object = smtp.get_transport_info("ssl_object")
            if ssl_object is None:
                raise MailConnectionError(ErrorKind.TLS, "The server did not start TLS.")
            verify_pin(ssl_object, endpoint.pinned_sha256)
        if endpoint.username and endpoint.access_token is not None:
            try:
                await smtp.auth_xoauth2(endpoint.username, endpoint.access_token)
            except aiosmtplib.SMTPAuthenticationError as exc:
                raise MailConnectionError(
                    ErrorKind.OAUTH_REFUSED,
                    (
                        "The SMTP server refused the sign-in with your account. Sign in again "
                        "under Mail Sync."
                    ),
                    detail=str(exc),
                ) from None
        elif endpoint.username:
            try:
                await smtp.login(endpoint.username, endpoint.password)
            except aiosmtplib.SMTPAuthenticationError as exc:
                raise MailConnectionError(
                    ErrorKind.AUTH_FAILED,
                    "The SMTP server refused the user name or password. Update the password.",
                    detail=str(exc),
                ) from None
    except BaseException:
        smtp.close()
        raise
    return smtp


async def probe_endpoint(host: str, port: int, timeout: float, policy: SmtpPolicy) -> None:
    """ "Test connection" (R15): host and port only, no TLS, no credentials."""
    sock, _ = await open_socket(
        SmtpEndpoint(host=host, port=port, tls="plain", timeout=timeout), policy
    )
    sock.close()


async def open_channel(endpoint: SmtpEndpoint, policy: SmtpPolicy) -> SmtpChannel:
    """A session as open_session opens it (EHLO or HELO said), its transactions spoken by
    SmtpChannel."""
    smtp = await open_session(endpoint, policy)
    try:
        if smtp.is_ehlo_or_helo_needed:  # no AUTH, so nothing asked EHLO yet
            try:
                await smtp.ehlo()
            except aiosmtplib.SMTPHeloError:
                await smtp.helo()
        transport = smtp.transport
        if transport is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    except BaseException:
        smtp.close()
        raise
    return SmtpChannel(
        transport, pipelining=smtp.supports_extension("pipelining"), timeout=endpoint.timeout
    )


QUIT_SECONDS = 5.0
# as aiosmtplib: far over any real reply, a bound on a server that never ends one
MAX_REPLY_BYTES = 32 * 1024
RCPT_ACCEPTED = (250, 251)  # 251: "not local, will forward"


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass(frozen=True)
class Envelope:
    """What the server answered to one MAIL FROM, its RCPT TOs and DATA (None: DATA was not
    sent)."""

    mail: Reply
    recipients: list[tuple[str, Reply]]  # empty when MAIL FROM was refused without pipelining
    data: Reply | None

    @property
    def accepted(self) -> list[str]:
        return [address for address, reply in self.recipients if reply.code in RCPT_ACCEPTED]

    @property
    def refused(self) -> list[tuple[str, Reply]]:
        return [
            (address, reply)
            for address, reply in self.recipients
            if reply.code not in RCPT_ACCEPTED
        ]


class SmtpChannel(asyncio.Protocol):
    """The mail transactions of an open session, on the transport aiosmtplib opened and
    authenticated.

    Errors are aiosmtplib's: ``SMTPServerDisconnected`` when the connection is lost,
    ``SMTPResponseException`` (code -1) for a reply that is not SMTP.
    """

    def __init__(
        self, transport: asyncio.BaseTransport, *, pipelining: bool, timeout: float
    ) -> None:
        self.pipelining = pipelining
        self.timeout = timeout  # for each reply before the end of data
        self._transport = transport
        self._buffer = bytearray()
        self._lines: list[str] = []  # the lines of a multi-line reply so far
        self._replies: collections.deque[Reply] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self._in_data = False  # a 354 was answered and the end of data not sent
        transport.set_protocol(self)

    @property
    def is_connected(self) -> bool:
        return self._error is None and not self._transport.is_closing()

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._buffer += data
        while (end := self._buffer.find(b"\n")) != -1:
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                self._fail(
                    aiosmtplib.SMTPResponseException(-1, f"not an SMTP reply: {line[:200]!r}")
                )
                return
            self._lines.append(line[4:].decode("utf-8", "replace").strip())
            if line[3:4] != b"-":
                self._replies.append(Reply(int(line[:3]), "\n".join(self._lines)))
                self._lines = []
        if len(self._buffer) + sum(map(len, self._lines)) > MAX_REPLY_BYTES:
            self._fail(aiosmtplib.SMTPResponseException(-1, "reply too long"))
        self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected("Connection lost"))

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _write(self, data: bytes) -> None:
        if not self.is_connected:
            raise self._error or aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._transport.write(data)  # type: ignore[attr-defined]

    async def _reply(self, timeout: float) -> Reply:
        async with asyncio.timeout(timeout):
            while not self._replies:
                if self._error is not None:
                    raise self._error
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        return self._replies.popleft()

    async def _command(self, line: bytes) -> Reply:
        self._write(line)
        return await self._reply(self.timeout)

    async def envelope(self, sender: str, recipients: Sequence[str]) -> Envelope:
        """MAIL FROM, a RCPT TO for each recipient, and DATA unless none was accepted: in one write
        with PIPELINING (each reply is read, in order), else one by one."""
        mail = b"MAIL FROM:" + _path(sender) + b"\r\n"
        rcpts = [b"RCPT TO:" + _path(recipient) + b"\r\n" for recipient in recipients]
        if self.pipelining:
            self._write(b"".join((mail, *rcpts, b"DATA\r\n")))
            mail_reply = await self._reply(self.timeout)
            rcpt_replies = [await self._reply(self.timeout) for _ in rcpts]
            data: Reply | None = await self._reply(self.timeout)
        else:
            mail_reply = await self._command(mail)
            if mail_reply.code != 250:
                return Envelope(mail_reply, [], None)
            rcpt_replies = [await self._command(rcpt) for rcpt in rcpts]
            data = (
                await self._command(b"DATA\r\n")
                if any(r.code in RCPT_ACCEPTED for r in rcpt_replies)
                else None
            )
        self._in_data = data is not None and data.code == 354
        return Envelope(mail_reply, list(zip(recipients, rcpt_replies, strict=True)), data)

    def send_body(self, raw: bytes) -> None:
        """The message after a 354, as aiosmtplib sends it (CRLF line ends, leading dots doubled),
        and no end of data yet."""
        self._write(PERIOD_REGEX.sub(b"..", normalize_message_line_endings(raw)))

    async def end_data(self, timeout: float) -> Reply:
        """The end-of-data mark, from which the server holds the message, and its reply."""
        self._write(b".\r\n")
        self._in_data = False
        return await self._reply(timeout)

    async def rset(self) -> bool:
        """End the transaction and keep the session; False: the session cannot go on."""
        if self._in_data:
            # only the end of data ends data, and that would hand the server a message
            return False
        try:
            return (await self._command(b"RSET\r\n")).code == 250
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            return False

    async def quit(self) -> None:
        """QUIT, then close.  Cut inside a message's data, the connection is only closed: RFC 5321
        §3.8 has the server drop a transaction whose end of data never came."""
        if self.is_connected and not self._in_data:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                self._write(b"QUIT\r\n")
                await self._reply(QUIT_SECONDS)
        self.close()

    def close(self) -> None:
        self._transport.close()


def _path(address: str) -> bytes:
    path = quote_address(address).encode("ascii")
    if COMMAND_INJECTION_REGEX.search(path):
        # never one command turned into two (R22); validated long before
        raise ValueError("an address with a control character")
    return path
