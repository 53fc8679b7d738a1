"""A real SMTP server (aiosmtpd) with STARTTLS and AUTH, recording what it receives, and delivering mail for
the users of a Dovecot beside it into their INBOX (as a provider does; the address proof of Mail Sync needs it)."""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword

from leadline_kit.infra import DovecotServer, free_port
from leadline_kit.testing.delivery import deliver_locally


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class RecordingHandler:
    dovecot: DovecotServer | None = None
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        data = bytes(envelope.original_content or b"")
        with self.lock:
            self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), data))
        if self.dovecot is not None:
            deliver_locally(self.dovecot, envelope.rcpt_tos, data)
        return "250 2.0.0 queued"


class SmtpServer:
    """STARTTLS required before AUTH; accepts the users given to :meth:`add_user`."""

    def __init__(self, tls_ca: trustme.CA, dovecot: DovecotServer | None = None) -> None:
        cert = tls_ca.issue_cert("localhost", "127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.users: dict[str, str] = {}
        self.handler = RecordingHandler(dovecot)
        self.port = free_port()
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            tls_context=context,
            require_starttls=True,
            auth_require_tls=True,
            authenticator=self._authenticate,
            server_hostname="localhost",
            data_size_limit=40 * 1024 * 1024,
        )

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user, password = auth_data.login.decode(), auth_data.password.decode()
            if self.users.get(user) == password:
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def add_user(self, username: str, password: str) -> None:
        self.users[username] = password

    def received_with(self, needle: bytes) -> list[Received]:
        with self.handler.lock:
            return [r for r in self.handler.received if needle in r.data]

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
