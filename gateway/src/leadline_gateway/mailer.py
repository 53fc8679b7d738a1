"""The system mailer: mail the gateway itself sends (invitation codes), through an operator's SMTP
server.

The TLS mode is always set explicitly (R22): ``starttls`` requires STARTTLS and fails when the
server does not offer it, ``tls`` is implicit TLS, ``none`` is plain SMTP where the operator chose
it (the development sink of ``make run``).  A message that cannot be handed over is a 503 problem,
so the request that needed it (an invitation) rolls back and can be retried.
"""

from __future__ import annotations

import logging
import ssl
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr

import aiosmtplib

from leadline_gateway.config import Settings
from leadline_gateway.problems import MailerUnavailable

log = logging.getLogger("leadline.gateway.mailer")


class SystemMailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def configured(self) -> bool:
        return self.settings.mailer_host is not None

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.settings.mailer_ca_file)

    async def send(self, to: str, subject: str, text: str) -> None:
        """Hand one plain-text message to the operator's SMTP server; ``to`` is a validated
        address."""
        settings = self.settings
        if settings.mailer_host is None:
            raise MailerUnavailable(
                "no system mailer is configured: the operator sets LEADLINE_MAILER_HOST",
                headers={"Retry-After": "60"},
            )
        message = EmailMessage()
        message["From"] = settings.mailer_from
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = make_msgid(
            domain=parseaddr(settings.mailer_from)[1].rpartition("@")[2] or None
        )
        message.set_content(text)
        password = settings.mailer_password.get_secret_value() if settings.mailer_password else None
        try:
            await aiosmtplib.send(
                message,
                hostname=settings.mailer_host,
                port=settings.mailer_port,
                use_tls=settings.mailer_tls == "tls",
                start_tls=settings.mailer_tls == "starttls",
                tls_context=self._tls_context() if settings.mailer_tls != "none" else None,
                username=settings.mailer_username,
                password=password,
                timeout=settings.mailer_timeout,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.warning(
                "the system mailer at %s:%s refused or failed: %s",
                settings.mailer_host,
                settings.mailer_port,
                exc,
            )
            raise MailerUnavailable(
                "the system mailer could not send the message; try again shortly",
                headers={"Retry-After": "30"},
            ) from exc
