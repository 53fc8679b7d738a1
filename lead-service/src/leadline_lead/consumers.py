"""The lead service's event consumer: one durable JetStream consumer for everything it hears.

One consumer (not one per subject) keeps the stream's order between kinds of
events: a mailbox's last synced mail is applied before its disconnect with
"remove history", a company's settings before the mail that follows.

The kit's consumer applies a fetched batch in one transaction and hands its
fresh events to :func:`apply_events`, which applies consecutive mail events in
bulk (the timeline's hot path) and the rest one by one, in stream order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.consumer import EventConsumer, PermanentError
from leadline_kit.service import Runtime
from leadline_lead.addresses import address_or_none
from leadline_lead.blocklist.service import apply_company_settings
from leadline_lead.config import Settings
from leadline_lead.leads import repository as leads
from leadline_lead.models import processed
from leadline_lead.timeline import repository as timeline
from leadline_lead.timeline.service import apply_bounce, apply_complaint, apply_mail
from leadline_proto.events import (
    CompanyUpdatedV1,
    Event,
    LeadUnsubscribedV1,
    MailBouncedV1,
    MailboxDisconnectedV1,
    MailComplainedV1,
    MailSentV1,
    MailSyncedV1,
    UserDeletedV1,
    UserUpdatedV1,
)
from leadline_proto.subjects import event_subject

log = logging.getLogger("leadline.lead.consumer")

SUBJECTS = [
    event_subject("company.updated", 1),
    event_subject("mail.synced", 1),
    event_subject("mail.sent", 1),
    event_subject("mail.bounced", 1),
    event_subject("mail.complained", 1),
    event_subject("mailbox.disconnected", 1),
    event_subject("lead.unsubscribed", 1),
    event_subject("user.updated", 1),
    event_subject("user.deleted", 1),
]


async def apply_events(session: AsyncSession, events: Sequence[Event]) -> None:
    """Apply events in stream order; runs of mail go to the timeline in bulk."""
    mail: list[MailSyncedV1 | MailSentV1] = []
    for event in events:
        if isinstance(event, MailSyncedV1 | MailSentV1):
            mail.append(event)
            continue
        if mail:
            await apply_mail(session, mail)
            mail = []
        await _apply_event(session, event)
    if mail:
        await apply_mail(session, mail)


async def apply_event(session: AsyncSession, event: Event) -> None:
    """Apply one event; one the database refuses as data (SQLSTATE class 22) can never apply."""
    try:
        await _apply_event(session, event)
    except DBAPIError as exc:
        if str(getattr(exc.orig, "sqlstate", "")).startswith("22"):
            raise PermanentError(f"the database refuses its data: {exc.orig}") from exc
        raise


async def _apply_event(session: AsyncSession, event: Event) -> None:
    if isinstance(event, MailSyncedV1 | MailSentV1):
        await apply_mail(session, [event])
    elif isinstance(event, MailBouncedV1):
        await apply_bounce(session, event)
    elif isinstance(event, MailComplainedV1):
        await apply_complaint(session, event)
    elif isinstance(event, CompanyUpdatedV1):
        await apply_company_settings(session, event)
    elif isinstance(event, MailboxDisconnectedV1):
        if not event.payload.keep_history:
            await timeline.remove_mailbox_history(session, event.company_id, event.payload.mailbox_id)
    elif isinstance(event, LeadUnsubscribedV1):
        await apply_unsubscribe(session, event)
    elif isinstance(event, UserUpdatedV1 | UserDeletedV1):
        await leads.save_user(
            session,
            event.company_id,
            event.payload.user_id,
            deleted=isinstance(event, UserDeletedV1),
            at=event.occurred_at,
        )


async def apply_unsubscribe(session: AsyncSession, event: LeadUnsubscribedV1) -> None:
    """R16: the lead shows as unsubscribed (the send service keeps its own suppression list)."""
    lead_ids = [event.payload.lead_id] if event.payload.lead_id else []
    address = address_or_none(event.payload.address)
    if address:
        lead_ids.extend((await leads.leads_by_address(session, event.company_id, [address])).values())
    await leads.mark_unsubscribed(session, event.company_id, lead_ids, event.occurred_at)


def lead_consumers(runtime: Runtime) -> list[EventConsumer]:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    return [
        EventConsumer(
            db=runtime.db,
            js=runtime.jetstream,
            processed=processed,
            durable=settings.consumer_prefix,
            subjects=SUBJECTS,
            handler=apply_event,
            batch_handler=apply_events,
            batch_size=settings.consumer_batch_size,
            ack_wait=settings.consumer_ack_wait,
            deliver_since=settings.consumer_deliver_since,
        )
    ]
