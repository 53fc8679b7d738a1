"""``RPC_MAILBOX_SMTP``: the send service asks for a user's sending settings (R12, R13).

Answered over NATS core request/reply inside the deployment, in a queue group
so that one replica answers.  The reply carries decrypted passwords, or for a
mailbox signed in with OAuth2 a live access token (renewed here when close to
expiry; never the refresh token): it never goes to a log, and nothing but the
internal bus carries it.
"""

from __future__ import annotations

import functools
import logging

from leadline_kit import rpc
from leadline_kit.sealing import CredentialError, Sealed
from leadline_mail.net import ErrorKind, MailConnectionError
from leadline_proto.requests import MailboxSmtpReply, MailboxSmtpRequest
from leadline_proto.subjects import RPC_MAILBOX_SMTP
from leadline_sync.context import SyncContext
from leadline_sync.mailbox.repository import active_mailbox
from leadline_sync.mailbox.states import MailboxStatus

log = logging.getLogger("leadline.sync.smtp-settings")


async def mailbox_smtp_reply(context: SyncContext, request: MailboxSmtpRequest) -> MailboxSmtpReply:
    async with context.db.session() as session:
        row = await active_mailbox(session, request.company_id, request.user_id)
    if row is None or row.credential_ciphertext is None:
        return MailboxSmtpReply(found=False)
    try:
        secrets = context.cipher.open(
            row.company_id,
            row.id,
            Sealed(row.credential_key_id, row.credential_wrapped_key, row.credential_ciphertext),
        )
    except CredentialError as exc:
        log.error("mailbox %s: stored credentials unreadable: %s", row.id, exc)
        return MailboxSmtpReply(found=False)
    status, access_token = row.status, None
    if row.auth == "oauth2":
        try:
            access_token = await context.tokens.access_token(row.id)
        except MailConnectionError as error:
            if error.kind == ErrorKind.OAUTH_UNAVAILABLE:
                raise  # no answer: the asker retries, as for any passing outage
            status = MailboxStatus.ERROR  # the sync records it and shows the fix when it connects
    return MailboxSmtpReply(
        found=True,
        mailbox_id=row.id,
        status=status,
        address=row.address,
        provider=row.provider,
        smtp_use=row.smtp_use,
        smtp_host=row.smtp_host,
        smtp_port=row.smtp_port,
        smtp_tls=row.smtp_tls,
        smtp_username=row.smtp_username,
        smtp_password=secrets.smtp_password,
        smtp_pinned_sha256=row.smtp_pinned_sha256,
        imap_host=row.imap_host,
        imap_port=row.imap_port,
        imap_tls=row.imap_tls,
        imap_username=row.imap_username,
        imap_password=secrets.imap_password,
        imap_pinned_sha256=row.imap_pinned_sha256,
        sent_folder=row.sent_folder,
        provider_saves_sent=row.provider_saves_sent,
        auth=row.auth,
        access_token=access_token,
    )


def mailbox_smtp_responder(context: SyncContext) -> rpc.Responder[MailboxSmtpRequest]:
    """A request that cannot be read is answered "not found"; a failure is not answered at all (the
    asker times out and retries): never "not found" for a database failure."""

    return rpc.Responder(
        RPC_MAILBOX_SMTP,
        MailboxSmtpRequest,
        functools.partial(mailbox_smtp_reply, context),
        lambda why: MailboxSmtpReply(found=False),
    )
