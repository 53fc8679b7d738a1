"""Events the send service applies: its copy of lead addresses, Sent-folder sightings, bounces.

- ``lead.created|updated``: replace the lead's addresses (normalised); ``lead.deleted``: forget them.
- ``mail.synced`` from a Sent folder whose Message-ID is one of our ``unknown``
  messages: the server did take it (R21), so it becomes ``sent``.
- ``mail.bounced`` naming one of our Message-IDs: the message becomes ``bounced``.
"""

from __future__ import annotations

from sqlalchemy import delete, func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.consumer import EventConsumer
from leadline_kit.service import Runtime
from leadline_proto.events import (
    Event,
    LeadCreatedV1,
    LeadDeletedV1,
    LeadUpdatedV1,
    MailBouncedV1,
    MailSyncedV1,
)
from leadline_send.messages.leads import lead_copy
from leadline_send.models import lead_address, outgoing_message, processed

LEAD_SUBJECTS = ["leadline.lead.created.v1", "leadline.lead.updated.v1", "leadline.lead.deleted.v1"]
MAIL_SUBJECTS = ["leadline.mail.synced.v1", "leadline.mail.bounced.v1"]


async def apply_lead(session: AsyncSession, event: Event) -> None:
    if not isinstance(event, LeadCreatedV1 | LeadUpdatedV1 | LeadDeletedV1):
        return
    lead = event.payload
    await session.execute(delete(lead_address).where(lead_address.c.company_id == event.company_id,
                                                     lead_address.c.lead_id == lead.lead_id))
    if isinstance(event, LeadDeletedV1):
        return
    addresses, name = lead_copy(lead.addresses, lead.name)
    if addresses:
        await session.execute(insert(lead_address).on_conflict_do_nothing(), [
            {"company_id": event.company_id, "lead_id": lead.lead_id, "address": a, "position": n, "name": name}
            for n, a in enumerate(addresses)])


async def apply_mail(session: AsyncSession, event: Event) -> None:
    if isinstance(event, MailSyncedV1):
        if event.payload.folder != "sent":
            return
        await session.execute(update(outgoing_message).where(
            outgoing_message.c.company_id == event.company_id,
            outgoing_message.c.message_id == event.payload.message_id,
            outgoing_message.c.state == "unknown",
        ).values(state="sent", sent_at=event.payload.sent_at, updated_at=func.now(),
                 last_error="settled: the message was found in the Sent folder"))
    elif isinstance(event, MailBouncedV1):
        bounce = event.payload
        await session.execute(update(outgoing_message).where(
            outgoing_message.c.company_id == event.company_id,
            outgoing_message.c.message_id == bounce.original_message_id,
            outgoing_message.c.state.in_(("sent", "unknown")),
        ).values(state="bounced", updated_at=func.now(),
                 last_error=f"bounced for {bounce.recipient}: {bounce.status} {bounce.diagnostic}".strip()))


def consumers(runtime: Runtime, prefix: str) -> list[EventConsumer]:
    return [
        EventConsumer(db=runtime.db, js=runtime.jetstream, processed=processed, durable=f"{prefix}-leads",
                      subjects=LEAD_SUBJECTS, handler=apply_lead),
        EventConsumer(db=runtime.db, js=runtime.jetstream, processed=processed, durable=f"{prefix}-mail",
                      subjects=MAIL_SUBJECTS, handler=apply_mail),
    ]
