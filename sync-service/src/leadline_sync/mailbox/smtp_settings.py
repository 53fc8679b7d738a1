"""``RPC_MAILBOX_SMTP``: the send service asks for a user's sending settings (R12, R13).

Answered over NATS core request/reply inside the deployment, in a queue group
so that one replica answers.  The reply carries decrypted passwords, or for a
mailbox signed in with OAuth2 a live access token (renewed here when close to
expiry; never the refresh token): it never goes to a log, and nothing but the
internal bus carries it.
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from leadline_kit.sealing import CredentialError, Sealed
from leadline_mail.net import MailConnectionError
from leadline_proto.requests import MailboxSmtpReply, MailboxSmtpRequest
from leadline_proto.subjects import RPC_MAILBOX_SMTP
from leadline_sync.context import SyncContext
from leadline_sync.mailbox.service import active_mailbox

log = logging.getLogger("leadline.sync.smtp-settings")

QUEUE_GROUP = "leadline-sync"


async def mailbox_smtp_reply(context: SyncContext, request: MailboxSmtpRequest) -> MailboxSmtpReply:
    async with context.db.session() as session:
        row = await active_mailbox(session, request.company_id, request.user_id)
    if row is None or row.credential_ciphertext is None:
        return MailboxSmtpReply(found=False)
    try:
        secrets = context.cipher.open(
            row.company_id, row.id, Sealed(row.credential_key_id, row.credential_wrapped_key, row.credential_ciphertext)
        )
    except CredentialError as exc:
        log.error("mailbox %s: stored credentials unreadable: %s", row.id, exc)
        return MailboxSmtpReply(found=False)
    status, access_token = row.status, None
    if row.auth == "oauth2":
        try:
            access_token = await context.tokens.access_token(row.id)
        except MailConnectionError as error:
            if error.kind == "oauth_unavailable":
                raise  # no answer: the asker retries, as for any passing outage
            status = "error"  # the sync records it and shows the fix when it connects
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


async def serve_mailbox_smtp(context: SyncContext) -> Subscription:
    async def on_request(msg: Msg) -> None:
        try:
            request = MailboxSmtpRequest.model_validate_json(msg.data)
        except ValidationError:
            await msg.respond(MailboxSmtpReply(found=False).model_dump_json().encode())
            return
        try:
            reply = await mailbox_smtp_reply(context, request)
        except Exception:
            log.exception("mailbox SMTP settings request failed")
            return  # the asker times out and retries; never answer "not found" for a database failure
        await msg.respond(reply.model_dump_json().encode())

    subscription = await context.nc.subscribe(RPC_MAILBOX_SMTP, queue=QUEUE_GROUP, cb=on_request)
    await context.nc.flush()  # the server knows the subscription before the service says it is ready
    return subscription
