"""The far end of bench/send's user path: aiosmtpd with implicit TLS and AUTH, in a process of its own.

Postfix's ``smtp-sink`` (the faster sink) speaks neither TLS nor a real AUTH exchange and nothing here
can put TLS in front of it without a proxy slower than aiosmtpd itself, so the user's path (implicit
TLS, AUTH PLAIN/LOGIN with the mailbox's password) ends here: aiosmtpd on uvloop, offering PIPELINING
as the large providers do, counting what it accepts and keeping nothing.  The raw reference loops send
to the same server, so both sides of a ratio meet the same ceiling.

    python bench/send/smtp_server.py PORT CERT KEY USER PASSWORD   (prints "ready" when it listens)
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import warnings
from typing import Any

import uvloop
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


class CountingHandler:
    def __init__(self) -> None:
        self.accepted = 0

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.accepted += 1
        return "250 2.0.0 Ok: queued"


async def serve(port: int, cert: str, key: str, user: str, password: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = CountingHandler()

    def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            user.encode(), password.encode())
        return AuthResult(success=ok, handled=False)

    def factory() -> SMTP:
        return SMTP(handler, hostname="localhost", authenticator=authenticate, auth_require_tls=False,
                    data_size_limit=40 * 1024 * 1024)

    # implicit TLS: the transport is TLS before the greeting (aiosmtpd then sees a plain stream, hence
    # auth_require_tls=False: nothing on this server is ever in plaintext)
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", port, ssl=context)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message="Session.login_data is deprecated")  # aiosmtpd's own use of it
    port, cert, key, user, password = sys.argv[1:6]
    uvloop.run(serve(int(port), cert, key, user, password))
