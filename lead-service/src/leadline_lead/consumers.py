"""The lead service's event consumer: one durable JetStream consumer for everything it hears.

One consumer (not one per subject) keeps the stream's order between kinds of
events: a mailbox's last synced mail is applied before its disconnect with
"remove history", a company's settings before the mail that follows.

A fetched batch is applied in one transaction.  The kit's consumer calls its
handler once per event; this one claims the whole batch in
``processed_event`` with one statement and hands every fresh event to
:func:`apply_events` together, which applies consecutive mail events in bulk
(the timeline's hot path) and the rest one by one, in stream order.  When a
batch fails it falls back to the kit's one-event-per-transaction path, so one
bad event cannot hold back the others.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from sqlalchemy import ARRAY, Uuid, func, literal, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.consumer import CONSUMED, EventConsumer, PermanentError
from leadline_kit.service import Runtime
from leadline_lead.addresses import address_or_none
from leadline_lead.blocklist.service import apply_company_settings
from leadline_lead.config import Settings
from leadline_lead.leads import repository as leads
from leadline_lead.models import processed
from leadline_lead.timeline import repository as timeline
from leadline_lead.timeline.service import apply_bounce, apply_mail
from leadline_proto.events import (
    CompanyUpdatedV1,
    Event,
    LeadUnsubscribedV1,
    MailBouncedV1,
    MailboxDisconnectedV1,
    MailSentV1,
    MailSyncedV1,
    parse_event,
)
from leadline_proto.subjects import STREAM_NAME, event_subject

log = logging.getLogger("leadline.lead.consumer")

SUBJECTS = [
    event_subject("company.updated", 1),
    event_subject("mail.synced", 1),
    event_subject("mail.sent", 1),
    event_subject("mail.bounced", 1),
    event_subject("mailbox.disconnected", 1),
    event_subject("lead.unsubscribed", 1),
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
    elif isinstance(event, CompanyUpdatedV1):
        await apply_company_settings(session, event)
    elif isinstance(event, MailboxDisconnectedV1):
        if not event.payload.keep_history:
            await timeline.remove_mailbox_history(session, event.company_id, event.payload.mailbox_id)
    elif isinstance(event, LeadUnsubscribedV1):
        await apply_unsubscribe(session, event)


async def apply_unsubscribe(session: AsyncSession, event: LeadUnsubscribedV1) -> None:
    """R16: the lead shows as unsubscribed (the send service keeps its own suppression list)."""
    lead_ids = [event.payload.lead_id] if event.payload.lead_id else []
    address = address_or_none(event.payload.address)
    if address:
        lead_ids.extend((await leads.leads_by_address(session, event.company_id, [address])).values())
    await leads.mark_unsubscribed(session, event.company_id, lead_ids, event.occurred_at)


class LeadEventConsumer(EventConsumer):
    """The kit's durable consumer, applying a fetched batch with one bulk handler call."""

    _subscription: JetStreamContext.PullSubscription | None = None
    deliver_since: datetime | None = None

    async def subscribe(self) -> JetStreamContext.PullSubscription:
        if self.deliver_since is None:
            self._subscription = await super().subscribe()
            return self._subscription
        config = ConsumerConfig(
            durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=self.deliver_since,
            ack_wait=self.ack_wait, max_ack_pending=10_000, filter_subjects=self.subjects,
        )
        await self.js.add_consumer(STREAM_NAME, config)
        self._subscription = await self.js.pull_subscribe_bind(self.durable, stream=STREAM_NAME)
        return self._subscription

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            # A fetch cancelled mid-way leaves messages in the subscription's queue, and the service's
            # ``nc.drain()`` at shutdown then waits its full 30 s timeout for them: unsubscribe first.
            if self._subscription is not None:
                with contextlib.suppress(Exception):
                    await self._subscription.unsubscribe()

    async def process(self, messages: Sequence[Msg]) -> None:
        parsed: list[tuple[Msg, Event]] = []
        for msg in messages:
            try:
                parsed.append((msg, parse_event(msg.data)))
            except ValidationError as exc:
                log.error("consumer %s: invalid event on %s terminated: %s", self.durable, msg.subject,
                          exc.errors(include_input=False)[:3])
                CONSUMED.labels(self.durable, "invalid").inc()
                await msg.term()
        if len(parsed) > 1:
            try:
                async with self.db.session() as session:
                    await self._apply_batch(session, [event for _, event in parsed])
            except Exception:
                log.info("consumer %s: batch of %d failed, applying one by one", self.durable, len(parsed))
            else:
                for msg, _ in parsed:
                    await msg.ack()
                CONSUMED.labels(self.durable, "applied").inc(len(parsed))
                return
        for msg, event in parsed:
            await self._process_one(msg, event)

    async def _apply_batch(self, session: AsyncSession, events: list[Event]) -> None:
        unique = list({event.event_id: event for event in events}.values())
        ids = literal([event.event_id for event in unique], ARRAY(Uuid))
        claim = (insert(self.processed)
                 .from_select(["consumer", "event_id"], select(literal(self.durable), func.unnest(ids)))
                 .on_conflict_do_nothing().returning(self.processed.c.event_id))
        fresh = set((await session.execute(claim)).scalars())
        await apply_events(session, [event for event in unique if event.event_id in fresh])


def lead_consumers(runtime: Runtime) -> list[EventConsumer]:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    consumer = LeadEventConsumer(db=runtime.db, js=runtime.jetstream, processed=processed,
                                 durable=settings.consumer_durable, subjects=SUBJECTS, handler=apply_event,
                                 batch_size=settings.consumer_batch_size, ack_wait=settings.consumer_ack_wait)
    consumer.deliver_since = settings.consumer_deliver_since
    return [consumer]
