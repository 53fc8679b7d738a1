"""Accepting Smart Mail: validate everything, pick the account, check quota, build, queue (R12–R16,
R23)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row

from leadline_kit.db import Database
from leadline_kit.errors import (
    Conflict,
    Problem,
    QuotaExceeded,
    Unprocessable,
)
from leadline_kit.identity import Identity
from leadline_send.context import SendContext
from leadline_send.database import Executor
from leadline_send.delivery.accounts import MailboxUnavailable, SendingAccount
from leadline_send.delivery.quota import QuotaUnavailable
from leadline_send.messages import repository
from leadline_send.messages.composition import (
    AttachmentFile,
    BuiltMessage,
    Draft,
    Recipient,
    Sender,
    build_message,
    check_address,
    check_header_value,
)
from leadline_send.messages.leads import LeadsUnavailable
from leadline_send.messages.schemas import BatchMessageIn, MessageIn, MessageOut
from leadline_send.messages.unsubscribe_token import make_token
from leadline_send.metrics import timed
from leadline_send.problems import (
    IdempotencyKeyReused,
    InvalidAttachment,
    InvalidBody,
    InvalidIdempotencyKey,
    LeadServiceUnavailable,
    MarketingOneRecipient,
    MessageNotFound,
    MessageTooLarge,
    NoRecipients,
    NoSendingAccount,
    NotResendable,
    QuotaLimit,
    SyncedMailboxUnavailable,
    TooManyRecipients,
    UnknownLead,
    UnsupportedAddress,
)
from leadline_send.states import DUE, RESENDABLE, MessageState

# Salespeople see and resend their own messages; managers and administrators see the company's.
OWN_MESSAGES_ONLY = {"salesperson", "jr_salesperson"}


def sender_scope(caller: Identity) -> uuid.UUID | None:
    """The only sender whose messages ``caller`` may see, or None for every sender of the
    company."""
    return caller.user_id if caller.role in OWN_MESSAGES_ONLY else None


def to_out(row: Mapping[Any, Any]) -> MessageOut:
    """A stored message as the API shows it, from its columns (an asyncpg record or a Row's
    ``_mapping``)."""
    return MessageOut(
        id=row["id"],
        state=row["state"],
        category=row["category"],
        message_id=row["message_id"],
        user_id=row["user_id"],
        from_address=row["from_address"],
        recipients=row["recipients"],
        lead_ids=row["lead_ids"],
        subject=row["subject"],
        size_bytes=row["size_bytes"],
        account=row["account_key"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"] if row["state"] in DUE else None,
        last_error=row["last_error"],
        smtp_reply=row["smtp_reply"],
        sent_copy=row["sent_copy"],
        delivery_notice=row["delivery_notice"],
        sent_at=row["sent_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= 200 or not key.isprintable():
        raise InvalidIdempotencyKey("Idempotency-Key must be 1–200 printable characters")
    return key


def request_fingerprint(body: MessageIn) -> str:
    """What a request asked for (a batch item's own key aside): the same key must come with the
    same."""
    return hashlib.sha256(body.model_dump_json(exclude={"idempotency_key"}).encode()).hexdigest()


def _first_use(row: Row[Any], fingerprint: str) -> Row[Any]:
    """The message an idempotency key was first used for, if this request is the same one."""
    if row.request_sha256 is not None and row.request_sha256 != fingerprint:
        raise IdempotencyKeyReused(
            (
                "this Idempotency-Key was used before with a different request; use a new key for "
                "a new message"
            ),
        )
    return row


async def _draft(context: SendContext, caller: Identity, body: MessageIn) -> Draft:
    check_header_value("subject", body.subject)
    for part in (body.text, body.html):
        if part is not None and "\x00" in part:
            raise InvalidBody("the body contains a NUL character")
    try:
        with timed("api-leads"):
            leads = (
                await context.leads.recipients(caller.company_id, body.lead_ids)
                if body.lead_ids
                else {}
            )
    except LeadsUnavailable as exc:
        raise LeadServiceUnavailable(str(exc)) from None
    missing = [str(i) for i in body.lead_ids if i not in leads]
    if missing:
        raise UnknownLead("unknown lead: " + ", ".join(missing), lead_ids=missing)
    to = [
        Recipient(address, check_header_value("lead name", name), lead_id)
        for lead_id, (address, name) in ((i, leads[i]) for i in body.lead_ids)
    ]
    to += [Recipient(check_address(f"to[{n}]", a)) for n, a in enumerate(body.to)]
    cc = [Recipient(check_address(f"cc[{n}]", a)) for n, a in enumerate(body.cc)]
    bcc = [Recipient(check_address(f"bcc[{n}]", a)) for n, a in enumerate(body.bcc)]
    if not to:
        raise NoRecipients("a message needs at least one recipient in lead_ids or to")
    # a non-ASCII local part (domains are kept in IDNA ASCII) needs SMTPUTF8 in the envelope and the
    # headers
    unsendable = [r.address for r in (*to, *cc, *bcc) if not r.address.isascii()]
    if unsendable:
        raise UnsupportedAddress(
            "addresses with non-ASCII characters before the @ (SMTPUTF8) cannot be sent yet: "
            + ", ".join(unsendable),
        )
    attachments = []
    for n, item in enumerate(body.attachments):
        check_header_value(f"attachments[{n}].filename", item.filename)
        try:
            content = base64.b64decode(item.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidAttachment(f"attachments[{n}].content_base64 is not base64") from None
        attachments.append(AttachmentFile(item.filename, item.content_type.lower(), content))
    return Draft(
        category=body.category,
        to=tuple(to),
        cc=tuple(cc),
        bcc=tuple(bcc),
        subject=body.subject,
        text=body.text,
        html=body.html,
        attachments=tuple(attachments),
    )


def _with_defaults(draft: Draft, account: SendingAccount) -> Draft:
    present = set(draft.recipients)
    cc = [*draft.cc, *(Recipient(a) for a in account.default_cc if a not in present)]
    bcc = [*draft.bcc, *(Recipient(a) for a in account.default_bcc if a not in present)]
    return Draft(
        category=draft.category,
        to=draft.to,
        cc=tuple(cc),
        bcc=tuple(bcc),
        subject=draft.subject,
        text=draft.text,
        html=draft.html,
        attachments=draft.attachments,
    )


async def _check_quota(
    context: SendContext, caller: Identity, accounts: list[SendingAccount], built: BuiltMessage
) -> SendingAccount:
    """The first account whose quota would pass now (R14, R15); 429 or 422 when none would."""
    refusals = []
    for account in accounts:
        try:
            reply = await context.quota.check(
                account.quota_request(
                    caller.company_id, caller.user_id, len(built.recipients), len(built.raw)
                )
            )
        except QuotaUnavailable:
            # Accept and let the delivery worker wait for the quota service: it never sends without
            # a reservation, and the caller gets a message whose state explains the wait.
            return account
        if reply.granted:
            return account
        refusals.append(reply)
    waits = sorted(
        ((r.retry_at, r.limit) for r in refusals if r.retry_at is not None), key=lambda w: w[0]
    )
    if not waits:
        first = refusals[0]
        raise QuotaLimit(
            f"the message can never pass the sending limit {first.limit}: {first.detail}",
            limit=first.limit,
        )
    retry_at, limit = waits[0]
    wait = max(1, math.ceil((retry_at - datetime.now(UTC)).total_seconds()))
    raise QuotaExceeded(
        f"sending limit {limit} reached; it resets at {retry_at.isoformat()}",
        headers={"Retry-After": str(wait)},
        limit=limit,
        retry_at=retry_at,
    )


async def _build(
    context: SendContext,
    draft: Draft,
    sender: Sender,
    *,
    message_id: str,
    date: datetime,
    unsubscribe_link: str | None,
) -> BuiltMessage:
    """Build a message, one at a time in this process, then let the event loop go round once before
    the next build may start.  Building is CPU work that never waits: sixteen batch requests
    building side by side made each step of a delivery worker (an SMTP reply, a commit) wait for
    sixteen builds, so while the API was busy the workers of the same process sent almost
    nothing."""
    async with context.building:
        with timed("api-build"):
            built = build_message(
                draft, sender, message_id=message_id, date=date, unsubscribe_link=unsubscribe_link
            )
        await asyncio.sleep(0)
    return built


async def _prepare(  # noqa: C901 - 13, older than the limit
    session: Executor,
    context: SendContext,
    caller: Identity,
    body: MessageIn,
    idempotency_key: str | None,
    chosen: dict[str, SendingAccount],
) -> Row[Any] | dict[str, Any]:
    """The stored message for a known idempotency key, or the values of the row to insert.

    ``chosen`` keeps the account whose quota passed per category, so a batch asks once.
    """
    fingerprint = request_fingerprint(body)
    if idempotency_key:
        existing = await repository.by_idempotency_key(
            session, caller.company_id, caller.user_id, idempotency_key
        )
        if existing is not None:
            return _first_use(existing, fingerprint)
    settings = context.settings
    draft = await _draft(context, caller, body)
    if body.category == "marketing":
        if len(draft.to) != 1 or draft.cc or draft.bcc:
            raise MarketingOneRecipient(
                "marketing mail goes to one recipient per message (each gets its own "
                "unsubscribe link); send one message per lead",
            )
        refused = await repository.unsubscribed(session, caller.company_id, draft.recipients)
        if refused:
            detail, slug = repository.marketing_refusal(refused)
            raise Unprocessable(detail, slug=slug, addresses=sorted(refused))
    try:
        with timed("api-route"):
            route = await context.delivery.routes.route(
                session, caller.company_id, caller.user_id, body.category
            )
    except MailboxUnavailable as exc:
        raise SyncedMailboxUnavailable(str(exc)) from None
    if not route.accounts:
        raise NoSendingAccount(route.reason)
    draft = _with_defaults(draft, route.accounts[0])
    if len(draft.recipients) > settings.max_recipients:
        raise TooManyRecipients(
            f"too many recipients: {len(draft.recipients)} (at most {settings.max_recipients})",
            limit=settings.max_recipients,
        )
    message_uuid = uuid.uuid4()
    message_id = f"<{message_uuid.hex}@{settings.message_domain}>"
    unsubscribe_link = None
    if body.category == "marketing":
        token = make_token(
            settings.unsubscribe_secret.get_secret_value(), caller.company_id, draft.to[0].address
        )
        unsubscribe_link = f"{settings.public_base_url.rstrip('/')}/v1/unsubscribe/{token}"
    now = datetime.now(UTC)
    account = chosen.get(body.category, route.accounts[0])
    built = await _build(
        context,
        draft,
        account.sender,
        message_id=message_id,
        date=now,
        unsubscribe_link=unsubscribe_link,
    )
    if len(built.raw) > settings.max_message_bytes:
        raise MessageTooLarge(
            f"the message is {len(built.raw)} bytes; at most {settings.max_message_bytes}",
            limit=settings.max_message_bytes,
        )
    if body.category not in chosen:
        with timed("api-quota-check"):
            chosen[body.category] = await _check_quota(context, caller, route.accounts, built)
        if chosen[body.category] is not account:
            account = chosen[body.category]
            built = await _build(
                context,
                draft,
                account.sender,
                message_id=message_id,
                date=now,
                unsubscribe_link=unsubscribe_link,
            )
    return {
        "id": message_uuid,
        "company_id": caller.company_id,
        "user_id": caller.user_id,
        "idempotency_key": idempotency_key,
        "request_sha256": fingerprint,
        "category": body.category,
        "state": MessageState.QUEUED,
        "message_id": message_id,
        "account_key": account.key,
        "provider": account.provider,
        "from_address": account.sender.from_email,
        "envelope_from": built.envelope_from,
        "recipients": built.recipients,
        "lead_ids": [str(i) for i in body.lead_ids],
        "draft": {**draft.to_json(), "unsubscribe_link": unsubscribe_link},
        "raw": built.raw,
        "size_bytes": len(built.raw),
        "subject": draft.subject,
        "created_at": now,
        "updated_at": now,
        "next_attempt_at": now,
    }


async def _stored(
    session: Executor, caller: Identity, values: dict[str, Any], inserted: Mapping[Any, Any] | None
) -> MessageOut:
    if inserted is None:
        # a racing request with the same idempotency key won; answer with its message
        key = values["idempotency_key"]
        assert key is not None
        row = await repository.by_idempotency_key(session, caller.company_id, caller.user_id, key)
        assert row is not None
        return to_out(_first_use(row, values["request_sha256"])._mapping)
    return to_out(inserted)


async def create_message(
    session: Executor,
    db: Database,
    context: SendContext,
    caller: Identity,
    body: MessageIn,
    idempotency_key: str | None,
) -> MessageOut:
    """One message, inserted by one plain statement that commits by itself (``db.plain``)."""
    prepared = await _prepare(session, context, caller, body, idempotency_key, {})
    if not isinstance(prepared, dict):
        return to_out(prepared._mapping)
    with timed("api-insert"):
        async with db.plain() as conn:
            inserted = await repository.insert_one(conn, prepared)
    return await _stored(session, caller, prepared, inserted)


async def create_messages(
    session: Executor, context: SendContext, caller: Identity, items: list[BatchMessageIn]
) -> list[MessageOut]:
    """A batch, all or nothing: the first item that fails refuses the batch, naming its index."""
    chosen: dict[str, SendingAccount] = {}
    prepared = []
    for index, item in enumerate(items):
        try:
            key = check_idempotency_key(item.idempotency_key)
            prepared.append(await _prepare(session, context, caller, item, key, chosen))
        except Problem as exc:
            exc.detail = f"messages[{index}]: {exc.detail}"
            exc.extra["index"] = index
            raise
    new = [p for p in prepared if isinstance(p, dict)]
    inserted = await repository.insert_messages(session, new) if new else {}
    return [
        await _stored(session, caller, p, _columns(inserted.get(p["id"])))
        if isinstance(p, dict)
        else to_out(p._mapping)
        for p in prepared
    ]


def _columns(row: Row[Any] | None) -> Mapping[Any, Any] | None:
    return row._mapping if row is not None else None


async def resend(session: Executor, caller: Identity, message_id: uuid.UUID) -> MessageOut:
    """Send again on purpose, with the same Message-ID (see the module docstring of endpoints)."""
    row = await repository.by_id(session, caller.company_id, message_id, sender_scope(caller))
    if row is None:
        raise MessageNotFound("no such message")
    if row.category == "marketing":
        refused = await repository.unsubscribed(session, caller.company_id, list(row.recipients))
        if refused:
            detail, slug = repository.marketing_refusal(refused)
            raise Conflict(detail, slug=slug)
    if not await repository.requeue(session, caller.company_id, message_id, RESENDABLE):
        raise NotResendable(
            f"a {row.state} message cannot be resent; only {', '.join(RESENDABLE)} ones",
            state=row.state,
        )
    fresh = await repository.by_id(session, caller.company_id, message_id)
    assert fresh is not None
    return to_out(fresh._mapping)
