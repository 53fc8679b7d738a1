"""The Life of the Lead: turning mail events into timeline events, and reading them back.

Applying a batch of ``mail.synced`` / ``mail.sent`` events takes a fixed
number of statements whatever its size: one lookup of every participant
address among the companies' lead addresses, one blocklist lookup, one
``INSERT ... ON CONFLICT DO UPDATE`` of the timeline events, one insert of
their sources and one bounce fix-up.  A message becomes one timeline event
per lead it involves, keyed by (company, lead, Message-ID), so the same
message arriving through Smart Mail, a Sent folder and a colleague's Inbox
is one event with three sources (R12, R26).

Kinds: ``email_received`` (inbound), ``email_sent`` (outbound, synced),
``smart_mail_sent`` (sent by Leadline; wins over ``email_sent`` for the same
message), ``bounce`` (a hard bounce: its own event, keyed ``bounce <Message-ID>``,
and the original event gets ``bounced_at``), ``delivery_delayed`` (a soft
one, keyed ``delayed <Message-ID>``; the original stays as it was) and
``complaint`` (a feedback report about the message, keyed ``complaint <Message-ID>``).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.identity import Identity
from leadline_lead.addresses import (
    address_for_matching,
    address_or_none,
    domain_and_parents,
    domain_of,
    is_blocked,
)
from leadline_lead.leads import repository as leads
from leadline_lead.problems import LeadNotFound
from leadline_lead.timeline import repository
from leadline_lead.timeline.snippets import snippet
from leadline_proto.events import MailBouncedV1, MailComplainedV1, MailSentV1, MailSyncedV1

SMART_MAIL_SOURCE = "smart_mail"
BOUNCE_NOTICE_SOURCE = "bounce_notice"
SYNC_SOURCE = "sync"  # a synced message whose event names no mailbox
MAX_RECIPIENTS = 100
MAX_SUBJECT = 998
MAX_NAME = 200
MAX_MESSAGE_ID = 998


def message_key(message_id: str, *fallback: object) -> str:
    """Message-ID without brackets or whitespace; a made-up stable key when the message has none.

    Keys of real messages never contain a space, so they cannot collide with
    ``bounce <key>`` or ``no-id <hash>``.
    """
    key = clean_text("".join(message_id.split()).strip("<>"), MAX_MESSAGE_ID)
    if key:
        return key
    digest = hashlib.sha256("\x1f".join(str(part) for part in fallback).encode()).hexdigest()
    return f"no-id {digest}"


def clean_text(value: str, limit: int) -> str:
    """Mail text fit for a text column: PostgreSQL refuses NUL characters, hostile mail carries them
    (R27)."""
    return value.replace("\x00", "")[:limit]


def _addresses(raw: Sequence[str]) -> list[str]:
    normal = (address_for_matching(a) for a in raw[:MAX_RECIPIENTS])
    return list(dict.fromkeys(a for a in normal if a))


@dataclass
class _PendingEvent:
    row: dict[str, Any]
    sources: dict[str, uuid.UUID | None] = field(default_factory=dict)


async def apply_mail(session: AsyncSession, events: Sequence[MailSyncedV1 | MailSentV1]) -> None:  # noqa: C901 - 14, older than the limit
    """Apply a batch of synced and sent mail in bulk (see the module docstring)."""
    prepared = []
    wanted: set[tuple[uuid.UUID, str]] = set()
    for event in events:
        mail = event.payload
        sender = address_for_matching(mail.from_address)
        to, cc = _addresses(mail.to), _addresses(mail.cc)
        participants = list(dict.fromkeys([*([sender] if sender else []), *to, *cc]))
        prepared.append((event, sender, to, cc, participants))
        wanted.update((event.company_id, a) for a in participants)
    holders = await repository.lead_addresses(session, wanted)
    if not holders:
        return  # nothing involves a lead (the sync service should not have sent it; harmless)
    blocked_pairs = await repository.blocked_values(
        session,
        {c for c, _ in holders},
        {a for _, a in holders},
        {d for _, a in holders for d in domain_and_parents(domain_of(a))},
    )
    blocked: dict[uuid.UUID, set[str]] = {}
    for company_id, value in blocked_pairs:
        blocked.setdefault(company_id, set()).add(value)

    pending: dict[tuple[uuid.UUID, uuid.UUID, str], _PendingEvent] = {}
    for event, sender, to, cc, participants in prepared:
        company = event.company_id
        matched: dict[uuid.UUID, list[str]] = {}
        for address in participants:
            lead_id = holders.get((company, address))
            if lead_id is None or is_blocked(address, blocked.get(company, ())):
                continue
            matched.setdefault(lead_id, []).append(address)
        if not matched:
            continue
        mail = event.payload
        smart = isinstance(event, MailSentV1)
        key = message_key(
            mail.message_id, mail.from_address, mail.sent_at.isoformat(), mail.subject, *mail.to
        )
        kind = (
            "smart_mail_sent"
            if smart
            else ("email_sent" if mail.direction == "outbound" else "email_received")
        )
        category = event.payload.category if isinstance(event, MailSentV1) else "personal"
        if smart:
            source: tuple[str, uuid.UUID | None] = (SMART_MAIL_SOURCE, None)
        elif mail.mailbox_id is not None:
            source = (str(mail.mailbox_id), mail.mailbox_id)
        else:
            source = (SYNC_SOURCE, None)
        body = snippet(mail.text, mail.html)
        for lead_id, addresses in matched.items():
            row = {
                "company_id": company,
                "lead_id": lead_id,
                "message_key": key,
                "message_id": clean_text(mail.message_id, MAX_MESSAGE_ID),
                "kind": kind,
                "category": category,
                "occurred_at": mail.sent_at,
                "direction": mail.direction,
                "from_address": sender or "",
                "from_name": clean_text(mail.from_name, MAX_NAME),
                "to_addresses": to,
                "cc_addresses": cc,
                "matched_addresses": addresses,
                "subject": clean_text(mail.subject, MAX_SUBJECT),
                "snippet": body,
                "mailbox_id": mail.mailbox_id,
                "user_id": mail.user_id,
                "folder": mail.folder,
            }
            existing = pending.get((company, lead_id, key))
            if existing is None:
                existing = pending[(company, lead_id, key)] = _PendingEvent(row)
            else:
                _merge(existing.row, row)
            existing.sources[source[0]] = source[1]
    if not pending:
        return
    # a stable order keeps concurrent batches (replicas sharing the consumer) from deadlocking
    ordered = [pending[k] for k in sorted(pending, key=lambda k: (str(k[0]), str(k[1]), k[2]))]
    returned = await repository.upsert_mail_events(session, [p.row for p in ordered])
    ids = {(r.company_id, r.lead_id, r.message_key): r.id for r in returned}
    sources = [
        {
            "timeline_event_id": ids[(p.row["company_id"], p.row["lead_id"], p.row["message_key"])],
            "source": name,
            "company_id": p.row["company_id"],
            "mailbox_id": mailbox_id,
        }
        for p in ordered
        for name, mailbox_id in p.sources.items()
    ]
    await repository.insert_sources(session, sources)
    # only mail we sent can bounce
    outbound = [
        ids[(p.row["company_id"], p.row["lead_id"], p.row["message_key"])]
        for p in ordered
        if p.row["direction"] == "outbound"
    ]
    if outbound:
        await repository.mark_bounced_from_earlier_bounces(session, outbound)


def _merge(into: dict[str, Any], row: dict[str, Any]) -> None:
    """Two events of one batch about the same message and lead: the same rules as the upsert."""
    if row["kind"] == "smart_mail_sent":
        into["kind"], into["category"] = row["kind"], row["category"]
    for column in ("mailbox_id", "user_id", "folder"):
        into[column] = into[column] or row[column]
    into["snippet"] = into["snippet"] or row["snippet"]
    into["matched_addresses"] = list(
        dict.fromkeys([*into["matched_addresses"], *row["matched_addresses"]])
    )


async def apply_bounce(session: AsyncSession, event: MailBouncedV1) -> None:
    """R17: a hard bounce is a ``bounce`` event on the recipient's lead and marks the original
    bounced; a soft one is a ``delivery_delayed`` event and marks nothing.  A notice that named no
    recipient is put on the lead the original message went to, when exactly one lead's timeline
    holds it."""
    bounce = event.payload
    company = event.company_id
    original = message_key(
        bounce.original_message_id, "bounce", bounce.recipient, bounce.bounced_at.isoformat()
    )
    found = await _notice_lead(
        session, company, bounce.recipient, bounce.original_message_id, original
    )
    if found is None:
        return
    lead_id, recipient = found
    hard = bounce.severity == "hard"
    kind, prefix = ("bounce", "bounce") if hard else ("delivery_delayed", "delayed")
    await _record_notice(
        session,
        event,
        lead_id,
        original,
        {
            "message_key": f"{prefix} {original}",
            "message_id": clean_text(bounce.original_message_id, MAX_MESSAGE_ID),
            "kind": kind,
            "occurred_at": bounce.bounced_at,
            "to_addresses": [recipient],
            "matched_addresses": [recipient],
            "snippet": snippet(bounce.diagnostic, None),
            "mailbox_id": bounce.mailbox_id,
            "user_id": bounce.user_id,
            "bounce_recipient": recipient,
            "bounce_status": clean_text(bounce.status, 32),
            "bounce_diagnostic": clean_text(bounce.diagnostic, 2000),
        },
    )
    if hard:
        await repository.mark_bounced(session, company, lead_id, original, bounce.bounced_at)
        await leads.mark_bounced(session, company, lead_id, bounce.bounced_at)


async def apply_complaint(session: AsyncSession, event: MailComplainedV1) -> None:
    """A feedback report: a ``complaint`` event on the lead, and the lead marked ``complained``
    (abuse, fraud, other) or ``unsubscribed`` (an opt-out report).  The send service stops its
    marketing mail."""
    complaint = event.payload
    company = event.company_id
    original = message_key(
        complaint.original_message_id,
        "complaint",
        complaint.recipient,
        complaint.complained_at.isoformat(),
    )
    found = await _notice_lead(
        session, company, complaint.recipient, complaint.original_message_id, original
    )
    if found is None:
        return
    lead_id, recipient = found
    opt_out = complaint.feedback_type == "opt-out"
    by = f" by {complaint.reporter}" if complaint.reporter else ""
    said = "asked to get no more mail" if opt_out else "reported the mail as spam"
    await _record_notice(
        session,
        event,
        lead_id,
        original,
        {
            "message_key": f"complaint {original}",
            "message_id": clean_text(complaint.original_message_id, MAX_MESSAGE_ID),
            "kind": "complaint",
            "occurred_at": complaint.complained_at,
            "to_addresses": [recipient],
            "matched_addresses": [recipient],
            "snippet": clean_text(
                f"{recipient} {said} ({complaint.feedback_type} report{by})", 500
            ),
            "mailbox_id": complaint.mailbox_id,
            "user_id": complaint.user_id,
        },
    )
    if opt_out:
        await leads.mark_unsubscribed(session, company, [lead_id], complaint.complained_at)
    else:
        await leads.mark_complained(session, company, lead_id, complaint.complained_at)


async def _notice_lead(
    session: AsyncSession, company: uuid.UUID, named: str, original_message_id: str, original: str
) -> tuple[uuid.UUID, str] | None:
    """The lead a notice is about (and its address): the one it names, else the one the original
    went to."""
    recipient = address_or_none(named)
    if recipient is not None:
        lead_id = (await leads.leads_by_address(session, company, [recipient])).get(recipient)
        if lead_id is None or await repository.blocked_values(
            session, {company}, {recipient}, domain_and_parents(domain_of(recipient))
        ):
            return None
        return lead_id, recipient
    if original_message_id:
        return await repository.outbound_recipient(session, company, original)
    return None


async def _record_notice(
    session: AsyncSession,
    event: MailBouncedV1 | MailComplainedV1,
    lead_id: uuid.UUID,
    original: str,
    row: dict[str, Any],
) -> None:
    """The notice's own timeline event (once, however many mailboxes it arrives through) and its
    source."""
    company = event.company_id
    subject = await repository.original_subject(session, company, lead_id, original) or ""
    mailbox_id = row["mailbox_id"]
    event_id = await repository.upsert_bounce(
        session,
        {
            "company_id": company,
            "lead_id": lead_id,
            "category": "personal",
            "direction": "inbound",
            "subject": subject[:MAX_SUBJECT],
            "folder": "inbox" if mailbox_id else None,
            **row,
        },
    )
    name = str(mailbox_id) if mailbox_id else BOUNCE_NOTICE_SOURCE
    await repository.insert_sources(
        session,
        [
            {
                "timeline_event_id": event_id,
                "source": name,
                "company_id": company,
                "mailbox_id": mailbox_id,
            }
        ],
    )


async def timeline(
    session: AsyncSession,
    caller: Identity,
    lead_id: uuid.UUID,
    limit: int = repository.TIMELINE_LIMIT,
) -> bytes:
    """The lead's most recent events, newest first, at most 300 (R7), as the JSON of
    :class:`Timeline`.

    Serialised straight from the rows: this is the hot read path, and every value comes from
    columns the schema already constrains (kinds, directions, categories).
    """
    if await leads.get_lead(session, caller.company_id, lead_id) is None:
        raise LeadNotFound("no such lead")
    rows = await repository.recent_events(
        session, caller.company_id, lead_id, min(limit, repository.TIMELINE_LIMIT)
    )
    return pydantic_core.to_json({"items": [_timeline_event(r) for r in rows]})


_NOT_MAILBOXES = (SMART_MAIL_SOURCE, BOUNCE_NOTICE_SOURCE, SYNC_SOURCE)


def _timeline_event(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "category": row.category,
        "occurred_at": row.occurred_at,
        "direction": row.direction,
        "from_address": row.from_address,
        "from_name": row.from_name,
        "to": row.to_addresses,
        "cc": row.cc_addresses,
        "subject": row.subject,
        "snippet": row.snippet,
        "message_id": row.message_id,
        "mailbox_id": row.mailbox_id,
        "user_id": row.user_id,
        "folder": row.folder,
        "bounced": row.bounced_at is not None,
        "bounced_at": row.bounced_at,
        "bounce_recipient": row.bounce_recipient,
        "bounce_status": row.bounce_status,
        "bounce_diagnostic": row.bounce_diagnostic,
        "sources": [
            {"kind": "mailbox", "mailbox_id": name}
            if name not in _NOT_MAILBOXES
            else {"kind": name, "mailbox_id": None}
            for name in row.sources or ()
        ],
    }
