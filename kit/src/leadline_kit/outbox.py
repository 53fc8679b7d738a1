"""Transactional outbox: an event is published if and only if its transaction commits.

A service writes its change and :func:`enqueue` the event in the same
transaction.  The relay takes committed rows with ``FOR UPDATE SKIP LOCKED``
(never by "id greater than the last seen": rows commit out of id order) and
deletes them in the same statement, publishes each to JetStream with
``Nats-Msg-Id`` = event id and waits for every publish acknowledgement before
it commits: a failed publish rolls the delete back.  A relay killed after
publishing and before committing publishes again on restart; JetStream's
duplicate window and the consumers' processed-event tables make that
harmless.  ``pg_notify`` on enqueue wakes the relays of every process as soon
as the transaction commits; a writer with a
steady flow of events may instead wake its own process's relay
(:meth:`OutboxRelay.wake`, ``Runtime.wake_relay``) and spare the others a pass
that finds nothing; a timer covers lost notifications.  A process that runs no
relay (``LEADLINE_OUTBOX_RELAY=false``: the send service's delivery processes,
whose event loop paces SMTP) wakes the other processes' relays instead, with
one notification per burst of commits (:class:`RelayWaker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
from nats.js import JetStreamContext
from prometheus_client import Counter
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    Select,
    Table,
    Text,
    Uuid,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.backoff import Backoff
from leadline_kit.db import Database, asyncpg_dsn
from leadline_proto.events import EventBase

log = logging.getLogger("leadline.outbox")

PUBLISH_RETRY = Backoff(0.2, 30.0)  # a relay batch that failed (NATS or the database away)

PUBLISHED = Counter(
    "leadline_outbox_published_total", "Events published from the outbox", ["service"]
)
RELAY_SECONDS = Counter(
    "leadline_outbox_relay_seconds_total",
    "Seconds of relay passes that published events (take, publish, commit)",
    ["service"],
)
PUBLISH_FAILURES = Counter(
    "leadline_outbox_failures_total", "Outbox relay batches that failed", ["service"]
)


def outbox_table(metadata: MetaData) -> Table:
    return Table(
        "outbox",
        metadata,
        Column("event_id", Uuid, primary_key=True),
        Column("subject", Text, nullable=False),
        Column("body", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index("ix_outbox_created_at", "created_at"),
    )


def notify_channel(schema: str) -> str:
    return f"leadline_outbox_{schema}"


def _wake_relays(schema: str) -> Select[tuple[None]]:
    """The statement that wakes the relays of every process of the service once its transaction
    commits."""
    return select(func.pg_notify(notify_channel(schema), ""))


async def enqueue(session: AsyncSession, table: Table, *events: EventBase) -> None:
    """Add events to the outbox inside the caller's transaction."""
    if not events:
        return
    await session.execute(
        table.insert(),
        [
            {"event_id": e.event_id, "subject": e.subject, "body": e.model_dump_json().encode()}
            for e in events
        ],
    )
    await session.execute(_wake_relays(str(table.schema)))


# One statement takes a batch: a relay pass is a transaction of three round trips on the driver's
# connection.  Through the ORM (select, delete, begin, commit) a pass cost more CPU than the events
# it carried, and every wake-up of every replica makes a pass.
_TAKE = """
DELETE FROM {table} WHERE event_id IN (
    SELECT event_id FROM {table} ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED
)
RETURNING event_id, subject, body, created_at
"""


class OutboxRelay:
    def __init__(
        self,
        db: Database,
        table: Table,
        js: JetStreamContext,
        *,
        service: str,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        gather_seconds: float = 0.005,
    ) -> None:
        self.db = db
        self.table = table
        self.js = js
        self.service = service
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        # After a wake-up, wait this long for more events: under a steady flow of commits (one send
        # settled every millisecond) each batch then carries several events instead of one, for one
        # transaction instead of several; an event waits at most this much longer.
        self.gather_seconds = gather_seconds
        self._wake = asyncio.Event()
        self._take = _TAKE.format(
            table=f'"{table.schema}"."{table.name}"' if table.schema else f'"{table.name}"'
        )

    def wake(self) -> None:
        """Events were committed by this process: publish them (after ``gather_seconds``)."""
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish one batch of committed events; returns how many were published."""
        started = time.perf_counter()
        async with self.db.engine.connect() as connection:
            conn: asyncpg.Connection = (await connection.get_raw_connection()).driver_connection
            async with conn.transaction():
                rows = sorted(
                    await conn.fetch(self._take, self.batch_size), key=lambda row: row["created_at"]
                )
                if not rows:
                    return 0
                await asyncio.gather(
                    *(
                        self.js.publish(
                            row["subject"],
                            row["body"],
                            headers={"Nats-Msg-Id": str(row["event_id"])},
                        )
                        for row in rows
                    )
                )
        PUBLISHED.labels(self.service).inc(len(rows))
        RELAY_SECONDS.labels(self.service).inc(time.perf_counter() - started)
        return len(rows)

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen())
        failures = 0
        try:
            while True:
                try:
                    published = await self.relay_once()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception:
                    failures += 1
                    PUBLISH_FAILURES.labels(self.service).inc()
                    log.exception("outbox relay batch failed (attempt %d); retrying", failures)
                    await asyncio.sleep(PUBLISH_RETRY.seconds(failures))
                    continue
                if published < self.batch_size:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                        await asyncio.sleep(self.gather_seconds)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener

    async def _listen(self) -> None:
        while True:
            try:
                conn = await asyncpg.connect(asyncpg_dsn(self.db.url))
                closed = asyncio.Event()
                try:
                    conn.add_termination_listener(lambda _, done=closed: done.set())
                    await conn.add_listener(
                        notify_channel(self.db.schema), lambda *_: self._wake.set()
                    )
                    await closed.wait()
                finally:
                    with contextlib.suppress(Exception):
                        await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox listener reconnecting: %s", exc)
                await asyncio.sleep(1)


class RelayWaker:
    """Wakes the relays of the service's other processes, for a process that publishes nothing
    itself.

    One ``pg_notify`` per ``gather_seconds`` however many commits call :meth:`wake` meanwhile: a
    notification per event would cost each commit a round trip, and PostgreSQL takes a database-wide
    lock to queue each committed notification.  A wake that comes once the notification is on its
    way sends another after it.  Should a notification fail, the relays' timer publishes the events.
    """

    def __init__(self, db: Database, gather_seconds: float = 0.1) -> None:
        self.db = db
        self.gather_seconds = gather_seconds
        self._sending: asyncio.Task[None] | None = None
        self._again = False

    def wake(self) -> None:
        """Events were committed to the outbox by this process."""
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._notify())
        else:
            self._again = True

    async def _notify(self) -> None:
        again = True
        while again:
            await asyncio.sleep(self.gather_seconds)
            self._again = False  # from here on a commit may come too late for this notification
            try:
                async with self.db.engine.begin() as connection:
                    await connection.execute(_wake_relays(self.db.schema))
            except Exception as exc:
                log.warning(
                    "could not wake the outbox relays (their timer publishes the events): %s", exc
                )
            again = self._again

    async def close(self) -> None:
        """Until the notification on its way (if any) is sent or has failed."""
        if self._sending is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._sending), 5)
