"""Events the send service applies: its copy of lead addresses, Sent-folder sightings, bounces,
complaints.

- ``lead.created|updated``: replace the lead's addresses (normalised); ``lead.deleted``: forget them
  (the kit's replica, :mod:`leadline_kit.lead_addresses`).
- ``mail.synced`` from a Sent folder whose Message-ID is one of our ``unknown`` messages: the server
  did take it (R21), so it becomes ``sent``.  The sync reports every message it reads from a Sent
  folder (each Smart Mail's own copy among them) and nearly all change nothing, so a fetched batch's
  sightings are one statement, and being repeatable (an update guarded by the state it leaves) they
  take no ``processed_event`` row: no write and no commit to wait for when nothing is ``unknown``.
- ``mail.bounced`` naming one of our Message-IDs: a hard bounce makes the message ``bounced``, a
  soft one (delayed) only records the notice; either shows in ``GET /v1/messages/{id}`` as
  ``delivery_notice``.
- ``mail.complained``: the lead (or the one recipient of the message the report returned) gets no
  more marketing mail, as after an unsubscribe (R16); one-to-one mail still goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.consumer import EventConsumer, Handlers
from leadline_kit.lead_addresses import LeadAddressReplica
from leadline_kit.service import Runtime
from leadline_proto.events import (
    Event,
    LeadPayload,
    MailBouncedV1,
    MailComplainedV1,
    MailSyncedV1,
)
from leadline_send.messages import repository
from leadline_send.messages.leads import lead_copy
from leadline_send.models import lead_address, processed
from leadline_send.states import MessageState, move

# a delivery notice is about a message the server took (or may have)
BOUNCEABLE = (MessageState.SENT, MessageState.UNKNOWN, MessageState.BOUNCED)


def lead_rows(lead: LeadPayload) -> list[dict[str, Any]]:
    """What the copy holds of a lead: each address with its position (the first is the recipient)
    and the lead's name."""
    addresses, name = lead_copy(lead.addresses, lead.name)
    return [{"address": a, "position": n, "name": name} for n, a in enumerate(addresses)]


LEADS = LeadAddressReplica(lead_address, lead_rows)


async def settle_unknown(session: AsyncSession, sightings: Sequence[MailSyncedV1]) -> None:
    """R21: an ``unknown`` message whose Message-ID turned up in the Sent folder was sent (one
    statement for every sighting given; those of other folders are passed over)."""
    sent = [event for event in sightings if event.payload.folder == "sent"]
    if not sent:
        return
    await repository.settle_seen_in_sent(
        session, [(e.company_id, e.payload.message_id, e.payload.sent_at) for e in sent]
    )


async def settle_one(session: AsyncSession, event: MailSyncedV1) -> None:
    """One sighting, as the handler table declares it; the consumer gathers a batch's
    (apply_mail)."""
    await settle_unknown(session, [event])


async def apply_complaint(session: AsyncSession, event: MailComplainedV1) -> None:
    """The address that complained goes on the marketing suppression list; a report naming nobody
    (redacted) is resolved through the message it returned, when that went to exactly one
    recipient."""
    complaint = event.payload
    address = complaint.recipient or None
    if address is None and complaint.original_message_id:
        recipients = await repository.recipients_of(
            session, event.company_id, complaint.original_message_id
        )
        address = recipients[0] if recipients and len(recipients) == 1 else None
    if address is not None:
        await repository.add_complaint(session, event.company_id, address)


async def apply_bounce(session: AsyncSession, event: MailBouncedV1) -> None:
    """A hard bounce marks the message ``bounced``; a soft one is only recorded.  A notice that
    named no lead is resolved here: this service knows whom the message went to."""
    bounce = event.payload
    if not bounce.original_message_id:
        return
    row = await repository.lock_bounceable(
        session, event.company_id, bounce.original_message_id, BOUNCEABLE
    )
    if row is None or (row.state == MessageState.BOUNCED and bounce.severity == "soft"):
        return  # not ours, or a late "still trying" after the message already bounced
    recipients: list[str] = list(row.recipients or [])
    recipient = bounce.recipient or (recipients[0] if len(recipients) == 1 else None)
    notice = {
        "severity": bounce.severity,
        "status": bounce.status,
        "reason": bounce.reason,
        "recipient": recipient,
        "diagnostic": bounce.diagnostic[:2000],
        "received_at": bounce.bounced_at.isoformat(),
    }
    whom = recipient or f"one of its {len(recipients)} recipients"
    if bounce.severity == "hard":
        values = {
            "state": move(MessageState(row.state), MessageState.BOUNCED),
            "delivery_notice": notice,
            "last_error": f"bounced for {whom}: {bounce.status} {bounce.diagnostic}".strip(),
        }
    else:
        values = {
            "delivery_notice": notice,
            "last_error": (
                f"delivery delayed for {whom}: {bounce.status} {bounce.diagnostic}"
            ).strip(),
        }
    await repository.note_delivery(session, row.id, values)


MAIL_EVENTS = (
    Handlers()
    .on(MailSyncedV1, settle_one, repeatable=True)
    .on(MailBouncedV1, apply_bounce)
    .on(MailComplainedV1, apply_complaint)
)


async def apply_mail(session: AsyncSession, events: Sequence[Event]) -> None:
    """A batch's Sent-folder sightings in one statement, then its bounces and complaints in order (a
    sighting only settles an ``unknown`` message, which a bounce of the same batch then still
    finds)."""
    await settle_unknown(session, [event for event in events if isinstance(event, MailSyncedV1)])
    for event in events:
        if not isinstance(event, MailSyncedV1):
            await MAIL_EVENTS(session, event)


def consumers(
    runtime: Runtime, prefix: str, deliver_since: datetime | None = None
) -> list[EventConsumer]:
    return [
        EventConsumer(
            db=runtime.db,
            js=runtime.jetstream,
            processed=processed,
            durable=f"{prefix}-leads",
            handlers=LEADS.handlers(Handlers()),
            deliver_since=deliver_since,
        ),
        EventConsumer(
            db=runtime.db,
            js=runtime.jetstream,
            processed=processed,
            durable=f"{prefix}-mail",
            handlers=MAIL_EVENTS,
            batch_handler=apply_mail,
            deliver_since=deliver_since,
        ),
    ]
