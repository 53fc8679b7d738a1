"""Proving the synced address before a mailbox is enabled (R29).

``PUT /v1/mail-sync`` names the address apart from the IMAP and SMTP user
names, and Smart Mail goes out with that address as From.  So before the
settings are saved, the address is proven with the logins given:

1. a message carrying a one-time token (header ``X-Leadline-Address-Proof``)
   goes out through the given SMTP login, from the address to the address;
2. it must arrive in the INBOX of the given IMAP login within
   ``sync_address_proof_seconds``, found there by ``UID SEARCH HEADER``;
3. found, it is deleted again (``UID EXPUNGE`` of its UID alone; a server
   without UIDPLUS keeps it flagged ``\\Deleted``).

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
import secrets
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Literal

import aiosmtplib

from leadline_kit.errors import Unprocessable
from leadline_mail.imap import connect_imap
from leadline_mail.net import ErrorKind
from leadline_sync.config import Settings
from leadline_sync.logins import ServerLogin, imap_settings, smtp_session
from leadline_sync.mailbox.fixes import fix_for

PROOF_HEADER = "X-Leadline-Address-Proof"
AddressProof = Literal["message", "provider"]
POLL_SECONDS = 0.2


class AddressUnproven(Unprocessable):
    slug = "mailbox-address-unproven"


def _unproven(message: str) -> AddressUnproven:
    return AddressUnproven(message, kind=ErrorKind.ADDRESS_UNPROVEN, fix=fix_for(ErrorKind.ADDRESS_UNPROVEN))


def needs_proof(row: Any | None, imap: ServerLogin, smtp: ServerLogin) -> bool:
    """Whether a password login must prove the address now: a new mailbox, one never proven (or proven
    by an OAuth2 provider), or other logins than the proven ones (a new password alone keeps the proof)."""
    if row is None or row.address_proven_by != "message":
        return True
    return (row.imap_host, row.imap_port, row.imap_username, row.smtp_host, row.smtp_port, row.smtp_username) != (
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


async def prove_address(address: str, imap: ServerLogin, smtp: ServerLogin, settings: Settings) -> None:
    """Send the token through ``smtp`` to ``address`` and find it in ``imap``'s INBOX; AddressUnproven if not."""
    token = secrets.token_urlsafe(24)
    async with smtp_session(smtp, settings) as session:
        try:
            await session.sendmail(address, [address], proof_message(address, token))
        except aiosmtplib.SMTPException as exc:
            raise _unproven(
                f"The SMTP server did not accept a message from {address} to {address}: {getattr(exc, 'message', exc)}"
            ) from None
    client = await connect_imap(imap_settings(imap, settings))
    try:
        await client.select("INBOX", readonly=False)
        async with asyncio.timeout(settings.sync_address_proof_seconds):
            while not (uids := await client.uids_with_header(PROOF_HEADER, token)):
                await asyncio.sleep(POLL_SECONDS)
                await client.noop()
        await client.expunge(uids)
    except TimeoutError:
        raise _unproven(
            f"The message Leadline sent through your SMTP login to {address} did not arrive in the "
            f"INBOX of your IMAP login within {settings.sync_address_proof_seconds:g} seconds."
        ) from None
    finally:
        await client.logout()
