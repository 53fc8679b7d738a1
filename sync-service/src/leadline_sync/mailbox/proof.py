"""Proving the synced address before a mailbox is enabled (R29).

``PUT /v1/mail-sync`` names the address apart from the IMAP and SMTP user
names, and Smart Mail goes out with that address as From.  So before the
settings are saved, the address is proven with the logins given, on the
sessions that just checked them (``connect.logged_in``: one login each):

1. the INBOX of the IMAP session is examined (read-only) and its UIDNEXT
   noted;
2. a message carrying a one-time token (header ``X-Leadline-Address-Proof``)
   goes out through the SMTP session, from the address to the address;
3. it must arrive in that INBOX within ``sync_address_proof_seconds``, found
   by ``UID SEARCH UID <UIDNEXT>:* HEADER``, again whenever IDLE reports new
   mail (at least every ``IDLE_SLICE_SECONDS``; without IDLE, every
   ``POLL_SECONDS``).  Only mail that arrived since step 1 is searched, and
   read-only: a server without an index of the header reads every message it
   searches, and in a read-write session Dovecot also adds the header to its
   cache, seconds each for an INBOX of 30,000 messages;
4. found, the address is proven; the message is deleted again after the
   answer (:meth:`ArrivedProof.take_back`, a session of its own: ``UID
   EXPUNGE`` of its UID alone,
   a server without UIDPLUS keeps it flagged ``\\Deleted``), because
   rewriting a large folder's index takes the server seconds that the user
   need not wait for.

So the SMTP login may send as the address, and mail to the address reaches the
INBOX that is synced.  Failing that, the connection is refused with a fix.
An OAuth2 sign-in needs no proof message: the provider names the signed-in
account's address, and that is the address connected (``oauth.flow``,
``address_proven_by="provider"``).

What this cannot rule out: a user who runs their own SMTP server can have it
"deliver" the message locally instead of to the address's real mail exchanger.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Literal

import aiosmtplib

from leadline_kit.errors import Unprocessable
from leadline_mail.imap import ImapClient, connect_imap
from leadline_mail.net import ErrorKind, MailConnectionError
from leadline_sync.config import Settings
from leadline_sync.logins import ServerLogin, imap_settings
from leadline_sync.mailbox.fixes import fix_for

log = logging.getLogger("leadline.sync.proof")

PROOF_HEADER = "X-Leadline-Address-Proof"
AddressProof = Literal["message", "provider"]
POLL_SECONDS = 0.2
IDLE_SLICE_SECONDS = 1.0


class AddressUnproven(Unprocessable):
    slug = "mailbox-address-unproven"


def _unproven(message: str) -> AddressUnproven:
    return AddressUnproven(
        message, kind=ErrorKind.ADDRESS_UNPROVEN, fix=fix_for(ErrorKind.ADDRESS_UNPROVEN)
    )


def needs_proof(row: Any | None, imap: ServerLogin, smtp: ServerLogin) -> bool:
    """Whether a password login must prove the address now: a new mailbox, one never proven (or
    proven by an OAuth2 provider), or other logins than the proven ones (a new password alone keeps
    the proof)."""
    if row is None or row.address_proven_by != "message":
        return True
    return (
        row.imap_host,
        row.imap_port,
        row.imap_username,
        row.smtp_host,
        row.smtp_port,
        row.smtp_username,
    ) != (
        imap.host,
        imap.port,
        imap.username,
        smtp.host,
        smtp.port,
        smtp.username,
    )


def proof_message(address: str, token: str) -> bytes:
    message = EmailMessage()
    message["From"] = address
    message["To"] = address
    message["Subject"] = "Leadline: confirming this mailbox's address"
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = f"<address-proof.{token}@leadline>"
    message[PROOF_HEADER] = token
    message.set_content(
        f"Leadline sent this message through your SMTP login to {address} to confirm that mail to "
        "this address arrives in the mailbox you are connecting. It deletes the message once it "
        "has found it; if you see it, you may delete it.\n"
    )
    return message.as_bytes()


@dataclass(frozen=True)
class ArrivedProof:
    """The proof found in the INBOX of ``login``, to be deleted."""

    login: ServerLogin
    settings: Settings
    uidvalidity: int
    uids: list[int]

    async def take_back(self) -> None:
        """Delete the proof message, in a session of its own; a failure is logged (the message says
        it may be deleted)."""
        try:
            client = await connect_imap(imap_settings(self.login, self.settings))
        except MailConnectionError:
            log.warning(
                "the address proof (INBOX UIDs %s) could not be deleted", self.uids, exc_info=True
            )
            return
        try:
            status = await client.select("INBOX", readonly=False)
            if status.uidvalidity == self.uidvalidity:
                # else its UIDs could be another message's now
                await client.expunge(self.uids)
        except Exception:
            log.warning(
                "the address proof (INBOX UIDs %s) could not be deleted", self.uids, exc_info=True
            )
        finally:
            await client.logout()


async def prove_address(
    address: str, client: ImapClient, smtp: aiosmtplib.SMTP, login: ServerLogin, settings: Settings
) -> ArrivedProof:
    """Send the token through the ``smtp`` session to ``address`` and find it in the INBOX of
    ``client`` (logged in as ``login``); AddressUnproven if not."""
    token = secrets.token_urlsafe(24)
    # examined before the message goes out: it arrives at UIDNEXT or above
    inbox = await client.select("INBOX")
    try:
        await smtp.sendmail(address, [address], proof_message(address, token))
    except aiosmtplib.SMTPException as exc:
        raise _unproven(
            f"The SMTP server did not accept a message from {address} to {address}: "
            f"{getattr(exc, 'message', exc)}"
        ) from None
    uids = await _arrived(client, token, inbox.uidnext, settings.sync_address_proof_seconds)
    if uids is None:
        raise _unproven(
            f"The message Leadline sent through your SMTP login to {address} did not arrive in the "
            f"INBOX of your IMAP login within {settings.sync_address_proof_seconds:g} seconds."
        )
    return ArrivedProof(login, settings, inbox.uidvalidity, uids)


async def _arrived(
    client: ImapClient, token: str, from_uid: int, seconds: float
) -> list[int] | None:
    """The UIDs of the proof once it is in the selected INBOX at ``from_uid`` or above; None after
    ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    idle = "IDLE" in client.capabilities
    while True:
        # news from here on: mail that arrives while the search runs ends the IDLE at once
        client.take_news()
        uids = await client.uids_with_header(PROOF_HEADER, token, from_uid=from_uid)
        left = deadline - loop.time()
        if uids or left <= 0:
            return uids or None
        if idle:
            await client.idle(min(IDLE_SLICE_SECONDS, left))
        else:
            await asyncio.sleep(min(POLL_SECONDS, left))
            await client.noop()
