"""The far end of bench/send's user path: aiosmtpd with implicit TLS and AUTH, in a process of its
own.

Postfix's ``smtp-sink`` (the faster sink) speaks neither TLS nor a real AUTH exchange and nothing
here can put TLS in front of it without a proxy slower than aiosmtpd itself, so the user's path
(implicit TLS, AUTH PLAIN/LOGIN with the mailbox's password) ends here: aiosmtpd on uvloop, offering
PIPELINING as the large providers do, counting what it accepts and keeping nothing but the mailbox's
own mail, which it delivers into Dovecot (the address proof of ``PUT /v1/mail-sync`` must arrive in
the INBOX). The raw reference loops send to the same server, so both sides of a ratio meet the same
ceiling.

    python bench/send/smtp_server.py PORT CERT KEY USER PASSWORD [DOVECOT_DIR]   (prints "ready")
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import warnings
from pathlib import Path
from typing import Any

import uvloop
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from leadline_kit.infra import DovecotServer
from leadline_kit.testing.delivery import deliver_locally


class CountingHandler:
    def __init__(self, dovecot: DovecotServer | None) -> None:
        self.accepted = 0
        self.dovecot = dovecot

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.accepted += 1
        if self.dovecot is not None:
            # the mailbox's own mail (the address proof of PUT /v1/mail-sync)
            deliver_locally(self.dovecot, envelope.rcpt_tos, envelope.original_content or b"")
        return "250 2.0.0 Ok: queued"


async def serve(
    port: int, cert: str, key: str, user: str, password: str, dovecot: DovecotServer | None
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = CountingHandler(dovecot)

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            user.encode(),
            password.encode(),
        )
        return AuthResult(success=ok, handled=False)

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname="localhost",
            authenticator=authenticate,
            auth_require_tls=False,
            data_size_limit=40 * 1024 * 1024,
        )

    # implicit TLS: the transport is TLS before the greeting (aiosmtpd then sees a plain stream,
    # hence auth_require_tls=False: nothing on this server is ever in plaintext)
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", port, ssl=context)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    # aiosmtpd's own use of it
    warnings.filterwarnings("ignore", message="Session.login_data is deprecated")
    port, cert, key, user, password = sys.argv[1:6]
    dovecot = DovecotServer(Path(sys.argv[6]), b"", b"") if len(sys.argv) > 6 else None
    uvloop.run(serve(int(port), cert, key, user, password, dovecot))
