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

from leadline_kit.consumer import EventConsumer, Handlers, PermanentError
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

log = logging.getLogger("leadline.lead.consumer")


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
        await EVENTS(session, event)
    if mail:
        await apply_mail(session, mail)


async def apply_event(session: AsyncSession, event: Event) -> None:
    """Apply one event; one the database refuses as data (SQLSTATE class 22) can never apply."""
    try:
        await EVENTS(session, event)
    except DBAPIError as exc:
        if str(getattr(exc.orig, "sqlstate", "")).startswith("22"):
            raise PermanentError(f"the database refuses its data: {exc.orig}") from exc
        raise


async def apply_one_mail(session: AsyncSession, event: MailSyncedV1 | MailSentV1) -> None:
    await apply_mail(session, [event])


async def remove_mailbox_history(session: AsyncSession, event: MailboxDisconnectedV1) -> None:
    if not event.payload.keep_history:
        await timeline.remove_mailbox_history(session, event.company_id, event.payload.mailbox_id)


async def save_user(session: AsyncSession, event: UserUpdatedV1) -> None:
    await leads.save_user(
        session, event.company_id, event.payload.user_id, deleted=False, at=event.occurred_at
    )


async def forget_user(session: AsyncSession, event: UserDeletedV1) -> None:
    await leads.save_user(
        session, event.company_id, event.payload.user_id, deleted=True, at=event.occurred_at
    )


async def apply_unsubscribe(session: AsyncSession, event: LeadUnsubscribedV1) -> None:
    """R16: the lead shows as unsubscribed (the send service keeps its own suppression list)."""
    lead_ids = [event.payload.lead_id] if event.payload.lead_id else []
    address = address_or_none(event.payload.address)
    if address:
        lead_ids.extend(
            (await leads.leads_by_address(session, event.company_id, [address])).values()
        )
    await leads.mark_unsubscribed(session, event.company_id, lead_ids, event.occurred_at)


EVENTS = (
    Handlers()
    .on(CompanyUpdatedV1, apply_company_settings)
    .on(MailSyncedV1, apply_one_mail)
    .on(MailSentV1, apply_one_mail)
    .on(MailBouncedV1, apply_bounce)
    .on(MailComplainedV1, apply_complaint)
    .on(MailboxDisconnectedV1, remove_mailbox_history)
    .on(LeadUnsubscribedV1, apply_unsubscribe)
    .on(UserUpdatedV1, save_user)
    .on(UserDeletedV1, forget_user)
)


def lead_consumers(runtime: Runtime) -> list[EventConsumer]:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    return [
        EventConsumer(
            db=runtime.db,
            js=runtime.jetstream,
            processed=processed,
            durable=settings.consumer_prefix,
            handlers=EVENTS,
            handler=apply_event,
            batch_handler=apply_events,
            batch_size=settings.consumer_batch_size,
            ack_wait=settings.consumer_ack_wait,
            deliver_since=settings.consumer_deliver_since,
        )
    ]
