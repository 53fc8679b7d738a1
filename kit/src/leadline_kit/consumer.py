"""Durable JetStream consumers that apply each event exactly once in effect.

Delivery is at-least-once; the effect is exactly-once because the handler runs
in the same transaction as an insert into the service's ``processed_event``
table (primary key consumer + event id, ``ON CONFLICT DO NOTHING``): a
redelivered event finds its row and is acknowledged without running again.
Acknowledgement happens only after commit.

Outcomes per message:
- invalid envelope or payload → ``term`` and an error log (never redelivered);
- :class:`PermanentError` from the handler → ``term`` and an error log;
- any other exception → ``nak`` with exponential backoff and jitter.

A fetched batch is applied in one transaction for speed: its events are
claimed in ``processed_event`` with one statement and the fresh ones handed,
in stream order, to the ``batch_handler`` when the service gives one (bulk SQL
on hot paths) or to the ``handler`` one by one.  If that fails, each message is
retried in its own transaction so one bad event cannot hold back the others.

What a consumer handles is declared once, as :class:`Handlers`: one handler per event type
(``Handlers().on(LeadCreatedV1, apply_lead).on(...)``); the consumer's subjects derive from those
types (``leadline.<type>.v<version>``), so no subject is written by hand and no handler tests
``isinstance``.

A type declared ``repeatable`` is applied without a ``processed_event`` row: its handler's effect
is the same however often it runs (an update guarded by the state it leaves, R26's exactly-once by
a guard instead of an event id).  Most such events change nothing (every Sent-folder sighting the
send service hears, of which only an ``unknown`` message's changes a row): claiming each was a
write and a commit to wait for, per event, that bought nothing.

A new durable consumer starts at the beginning of the stream (right in
production: nothing is missed); ``deliver_since`` starts it at a moment
instead, for tests that share one stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy import ARRAY, Column, DateTime, MetaData, Table, Text, Uuid, func, literal, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.backoff import Backoff
from leadline_kit.db import Database
from leadline_proto.events import Event, EventBase, parse_event
from leadline_proto.subjects import STREAM_NAME, event_subject

log = logging.getLogger("leadline.consumer")

NAK_BASE_SECONDS = 0.5  # the first redelivery of a failed event waits 0.25-0.5 s

CONSUMED = Counter(
    "leadline_events_consumed_total", "Events handled by consumers", ["consumer", "outcome"]
)
APPLY_SECONDS = Counter(
    "leadline_events_apply_seconds_total",
    "Seconds consumers spent applying fetched batches (to the acks)",
    ["consumer"],
)

Handler = Callable[[AsyncSession, Event], Awaitable[None]]
Handled = TypeVar("Handled", bound=EventBase)


class Handlers:
    """One handler per event type; calling it applies the event's handler (an unlisted type is
    ignored)."""

    def __init__(self) -> None:
        self._by_type: dict[type[EventBase], Callable[[AsyncSession, Any], Awaitable[None]]] = {}
        self._repeatable: set[type[EventBase]] = set()

    def on(
        self,
        kind: type[Handled],
        handler: Callable[[AsyncSession, Handled], Awaitable[None]],
        *,
        repeatable: bool = False,
    ) -> Handlers:
        """``repeatable``: running the handler again for the same event changes nothing (see the
        module docstring), so its events are not claimed in ``processed_event``."""
        assert kind not in self._by_type, f"{kind.__name__} has a handler already"
        self._by_type[kind] = handler
        if repeatable:
            self._repeatable.add(kind)
        return self

    def claimed(self, event: EventBase) -> bool:
        """Whether the event is applied once by its ``processed_event`` row (else it is
        repeatable)."""
        return type(event) not in self._repeatable

    @property
    def subjects(self) -> list[str]:
        return [
            event_subject(kind.model_fields["type"].default, kind.model_fields["version"].default)
            for kind in self._by_type
        ]

    async def __call__(self, session: AsyncSession, event: Event) -> None:
        handler = self._by_type.get(type(event))
        if handler is not None:
            await handler(session, event)


BatchHandler = Callable[[AsyncSession, Sequence[Event]], Awaitable[None]]


class PermanentError(Exception):
    """The event can never be applied (e.g. it refers to something that cannot exist)."""


def processed_event_table(metadata: MetaData) -> Table:
    return Table(
        "processed_event",
        metadata,
        Column("consumer", Text, primary_key=True),
        Column("event_id", Uuid, primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


class EventConsumer:
    def __init__(
        self,
        *,
        db: Database,
        js: JetStreamContext,
        processed: Table,
        durable: str,
        handlers: Handlers,
        handler: Handler | None = None,
        batch_handler: BatchHandler | None = None,
        batch_size: int = 200,
        ack_wait: float = 60.0,
        max_backoff: float = 60.0,
        deliver_since: datetime | None = None,
    ) -> None:
        self.db = db
        self.js = js
        self.processed = processed
        self.durable = durable
        self.subjects = handlers.subjects
        self.claimed = handlers.claimed
        # ``handler``: what applies one event, when the service wraps ``handlers`` (e.g. to map
        # errors)
        self.handler: Handler = handler or handlers
        self.batch_handler = batch_handler
        self.deliver_since = deliver_since
        self.batch_size = batch_size
        self.ack_wait = ack_wait
        self.max_backoff = max_backoff

    async def subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.BY_START_TIME if self.deliver_since else DeliverPolicy.ALL,
            opt_start_time=self.deliver_since,
            ack_wait=self.ack_wait,
            max_ack_pending=10_000,
            filter_subjects=self.subjects,
        )
        await self.js.add_consumer(STREAM_NAME, config)
        return await self.js.pull_subscribe_bind(self.durable, stream=STREAM_NAME)

    async def run(self) -> None:
        subscription = await self.subscribe()
        while True:
            try:
                messages = await subscription.fetch(self.batch_size, timeout=1.0)
            except (NatsTimeoutError, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("consumer %s fetch failed: %s", self.durable, exc)
                await asyncio.sleep(0.5)
                continue
            await self.process(messages)

    async def process(self, messages: Sequence[Msg]) -> None:
        started = time.perf_counter()
        try:
            await self._process(messages)
        finally:
            APPLY_SECONDS.labels(self.durable).inc(time.perf_counter() - started)

    async def _process(self, messages: Sequence[Msg]) -> None:
        parsed: list[tuple[Msg, Event]] = []
        for msg in messages:
            try:
                parsed.append((msg, parse_event(msg.data)))
            except ValidationError as exc:
                log.error(
                    "consumer %s: invalid event on %s terminated: %s",
                    self.durable,
                    msg.subject,
                    exc.errors(include_input=False)[:3],
                )
                CONSUMED.labels(self.durable, "invalid").inc()
                await msg.term()
        if not parsed:
            return
        if len(parsed) > 1:
            try:
                async with self.db.session() as session:
                    await self._apply(session, [event for _, event in parsed])
            except Exception:
                log.info(
                    "consumer %s: batch of %d failed, applying one by one",
                    self.durable,
                    len(parsed),
                )
            else:
                for msg, _ in parsed:
                    await msg.ack()
                CONSUMED.labels(self.durable, "applied").inc(len(parsed))
                return
        for msg, event in parsed:
            await self._process_one(msg, event)

    async def _apply(self, session: AsyncSession, events: Sequence[Event]) -> None:
        """Claim the events (one statement) and apply the ones not applied before, and the
        repeatable ones, in order."""
        unique = list({event.event_id: event for event in events}.values())
        to_claim = [event.event_id for event in unique if self.claimed(event)]
        fresh: set[Any] = set()
        if to_claim:
            claim = (
                insert(self.processed)
                .from_select(
                    ["consumer", "event_id"],
                    select(literal(self.durable), func.unnest(literal(to_claim, ARRAY(Uuid)))),
                )
                .on_conflict_do_nothing()
                .returning(self.processed.c.event_id)
            )
            fresh = set((await session.execute(claim)).scalars())
        todo = [event for event in unique if event.event_id in fresh or not self.claimed(event)]
        if self.batch_handler is not None:
            await self.batch_handler(session, todo)
        else:
            for event in todo:
                await self.handler(session, event)

    async def _process_one(self, msg: Msg, event: Event) -> None:
        try:
            async with self.db.session() as session:
                await self._apply(session, [event])
        except PermanentError as exc:
            log.error(
                "consumer %s: event %s (%s) can never apply, terminated: %s",
                self.durable,
                event.event_id,
                event.subject,
                exc,
            )
            CONSUMED.labels(self.durable, "terminated").inc()
            await msg.term()
            return
        except Exception:
            attempt = msg.metadata.num_delivered if msg.metadata else 1
            delay = Backoff(NAK_BASE_SECONDS, self.max_backoff).seconds(attempt)
            log.exception(
                "consumer %s: event %s failed (delivery %d), retry in %.1fs",
                self.durable,
                event.event_id,
                attempt,
                delay,
            )
            CONSUMED.labels(self.durable, "retried").inc()
            await msg.nak(delay=delay)
            return
        await msg.ack()
        CONSUMED.labels(self.durable, "applied").inc()
