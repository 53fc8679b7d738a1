"""Local delivery for the test SMTP servers: mail to a Dovecot user lands in that user's INBOX.

``PUT /v1/mail-sync`` proves the synced address by sending a message through the
given SMTP login to the address and finding it in the given IMAP INBOX (R29), as
at a real provider, whose SMTP server delivers its own users' mail.  The aiosmtpd
servers of the tests, benchmarks and ``make demo`` do the same with this: after
accepting a message they hand it to :meth:`DovecotServer.deliver` for every
recipient that is a user of the Dovecot beside them.  Mail to anyone else is only
recorded (or dropped), as before.
"""

from __future__ import annotations

from collections.abc import Iterable

from leadline_kit.infra import DovecotServer


def deliver_locally(dovecot: DovecotServer, rcpt_tos: Iterable[str], data: bytes) -> list[str]:
    """Deliver ``data`` to the recipients that are Dovecot users; returns them."""
    delivered = []
    for rcpt in rcpt_tos:
        if dovecot.has_user(rcpt):
            dovecot.deliver(rcpt, data)
            delivered.append(rcpt)
    return delivered
