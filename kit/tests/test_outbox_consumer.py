"""The outbox publishes iff the transaction commits; consumers apply each event once."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Column, Integer, Table, Text, Uuid, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit import bus
from leadline_kit.consumer import EventConsumer, Handlers, PermanentError, processed_event_table
from leadline_kit.db import Database, asyncpg_dsn, service_metadata
from leadline_kit.infra import ChildProcess
from leadline_kit.outbox import OutboxRelay, RelayWaker, enqueue, notify_channel, outbox_table
from leadline_proto.events import (
    CompanyPayload,
    CompanyUpdatedV1,
    Event,
    LeadCreatedV1,
    LeadPayload,
    UserDeletedV1,
    UserPayload,
    utcnow,
)

metadata = service_metadata("kittest")
outbox = outbox_table(metadata)
processed = processed_event_table(metadata)
applied = Table(
    "applied",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("n", Integer),
    Column("note", Text),
)


def lead_event(company_id: uuid.UUID) -> LeadCreatedV1:
    return LeadCreatedV1(
        company_id=company_id,
        payload=LeadPayload(
            lead_id=uuid.uuid4(), addresses=["lead@example.com"], created_at=utcnow()
        ),
    )


@pytest.fixture
async def db(fresh_database: str) -> AsyncIterator[Database]:
    database = Database(fresh_database, "kittest")
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql("CREATE SCHEMA kittest")
        await conn.run_sync(metadata.create_all)
    yield database
    await database.dispose()


@pytest.fixture
async def js(nats_url: str):  # type: ignore[no-untyped-def]
    nc, jetstream = await bus.connect(nats_url, "kit-test")
    await bus.ensure_stream(jetstream)
    yield jetstream
    await nc.close()


async def count_applications(session: AsyncSession, event: Event) -> None:
    await session.execute(
        insert(applied)
        .values(event_id=event.event_id, n=1)
        .on_conflict_do_update(index_elements=[applied.c.event_id], set_={"n": applied.c.n + 1})
    )


def consumer_for(db: Database, js, company: uuid.UUID, handler=count_applications) -> EventConsumer:  # type: ignore[no-untyped-def]
    async def own_company_only(session: AsyncSession, event: Event) -> None:
        # tests share one stream: each looks only at its own company's events
        if event.company_id == company:
            await handler(session, event)

    return EventConsumer(
        db=db,
        js=js,
        processed=processed,
        durable=f"kittest-{uuid.uuid4().hex[:8]}",
        handlers=Handlers().on(LeadCreatedV1, own_company_only),
    )


async def drain(
    consumer: EventConsumer, company_id: uuid.UUID, expected: int, timeout: float = 20
) -> None:
    task = asyncio.create_task(consumer.run())
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            async with consumer.db.session() as s:
                if (await s.scalar(select(func.count()).select_from(applied)) or 0) >= expected:
                    break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # room for any extra (wrong) application to show up
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_event_published_only_when_transaction_commits(db: Database, js) -> None:  # type: ignore[no-untyped-def]
    company = uuid.uuid4()
    committed, rolled_back = lead_event(company), lead_event(company)
    async with db.session() as s:
        await enqueue(s, outbox, committed)
    with pytest.raises(RuntimeError):
        async with db.session() as s:
            await enqueue(s, outbox, rolled_back)
            raise RuntimeError("business rule failed after the event was written")
    relay = OutboxRelay(db, outbox, js, service="kittest")
    assert await relay.relay_once() == 1
    consumer = consumer_for(db, js, company)
    await drain(consumer, company, 1)
    async with db.session() as s:
        seen = set((await s.execute(select(applied.c.event_id))).scalars())
        left = await s.scalar(select(func.count()).select_from(outbox))
    assert committed.event_id in seen
    assert rolled_back.event_id not in seen
    assert left == 0


async def test_a_batch_that_fails_to_publish_stays_in_the_outbox(db: Database, js) -> None:  # type: ignore[no-untyped-def]
    event = lead_event(uuid.uuid4())
    async with db.session() as s:
        await enqueue(s, outbox, event)
        # no stream takes this subject: JetStream refuses the publish
        await s.execute(
            outbox.insert().values(event_id=uuid.uuid4(), subject="kittest.nowhere", body=b"{}")
        )
    relay = OutboxRelay(db, outbox, js, service="kittest")
    with pytest.raises(Exception, match="no response from stream"):
        await relay.relay_once()
    async with db.session() as s:
        kept = set((await s.execute(select(outbox.c.subject))).scalars())
    assert kept == {event.subject, "kittest.nowhere"}  # the batch's delete was rolled back


async def test_a_process_without_a_relay_wakes_the_others_once_per_burst(db: Database, js) -> None:  # type: ignore[no-untyped-def]
    """Events written without a notification (as the send service's settles write them) are published
    by another process's relay as soon as the writer's RelayWaker wakes it: one notification for a
    burst of commits, one more for a later burst."""
    channel = notify_channel(db.schema)
    notified: list[str] = []
    listener = await asyncpg.connect(asyncpg_dsn(db.url))
    await listener.add_listener(channel, lambda *args: notified.append(args[-1]))
    relay = OutboxRelay(
        db, outbox, js, service="kittest", poll_interval=3600
    )  # only a notification wakes it
    passes = 0
    relay_once = relay.relay_once

    async def counted_pass() -> int:
        nonlocal passes
        published = await relay_once()
        passes += 1
        return published

    relay.relay_once = counted_pass  # type: ignore[method-assign]
    relaying = asyncio.create_task(relay.run())
    waker = RelayWaker(db)

    async def left() -> int:
        async with db.session() as s:
            return int(await s.scalar(select(func.count()).select_from(outbox)) or 0)

    async def write(size: int) -> None:
        for event in [lead_event(uuid.uuid4()) for _ in range(size)]:
            async with db.session() as s:
                await s.execute(
                    outbox.insert().values(
                        event_id=event.event_id,
                        subject=event.subject,
                        body=event.model_dump_json().encode(),
                    )
                )

    async def listening() -> (
        int
    ):  # the relay and this test: a notification before that would be lost
        async with db.session() as s:
            return int(
                await s.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE query = :listen AND datname = current_database()"
                    ),
                    {"listen": f'LISTEN "{channel}"'},
                )
                or 0
            )

    async def until(check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await check() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def idle() -> bool:  # listening, and its first pass (that finds the outbox empty) is over
        return passes == 1 and await listening() >= 2

    try:
        # an event written during the relay's first pass would be published by it, whatever wakes it
        await until(idle)
        assert await idle()
        await write(1)
        await asyncio.sleep(0.5)
        assert await left() == 1, "with nothing to wake it, the relay publishes only on its timer"
        assert passes == 1, "nothing woke the relay"
        for bursts in (1, 2):
            await write(20)
            for _ in range(20):
                waker.wake()

            async def published(bursts: int = bursts) -> bool:
                return len(notified) == bursts and not await left()

            await until(published)
            assert await left() == 0
            assert len(notified) == bursts
    finally:
        relaying.cancel()
        await asyncio.gather(relaying, return_exceptions=True)
        await waker.close()
        await listener.close()


RELAY_SCRIPT = """
import asyncio, os, signal, sys
from leadline_kit import bus
from leadline_kit.db import Database
from leadline_kit.outbox import OutboxRelay
sys.path.insert(0, {here!r})
from test_outbox_consumer import outbox
sys.stdin.readline()  # imported and ready: publish when the test says so
calls = 0
async def main():
    nc, js = await bus.connect({nats!r}, "relay")
    publish = js.publish
    async def publish_then_die(*args, **kwargs):
        # SIGKILL at the kill_after-th publish: mid-batch, with earlier publishes of the batch in flight
        global calls
        calls += 1
        if calls == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)
        return await publish(*args, **kwargs)
    js.publish = publish_then_die
    db = Database({url!r}, "kittest")
    relay = OutboxRelay(db, outbox, js, service="kittest", batch_size=100)
    await relay.run()
asyncio.run(main())
"""


@pytest.mark.slow
async def test_relay_killed_mid_batch_delivers_everything_once(  # type: ignore[no-untyped-def]
    db: Database, js, nats_url: str
) -> None:
    company = uuid.uuid4()
    events = [lead_event(company) for _ in range(1000)]
    for i in range(0, len(events), 500):
        async with db.session() as s:
            await enqueue(s, outbox, *events[i : i + 500])
    here = str(Path(__file__).parent)
    # Two relays kill themselves at a publish past their first batch and inside a later one (so one batch is
    # committed and one is published in part and rolled back); a third, that never dies, finishes. The kill
    # point is decided by the relay itself: a kill from outside raced a fast relay that emptied the outbox.
    kill_points = [random.choice([k for k in range(101, 250) if k % 100]) for _ in range(2)] + [0]
    scripts = [
        RELAY_SCRIPT.format(here=here, nats=nats_url, url=db.url, kill_after=k) for k in kill_points
    ]

    async def left() -> int:
        async with db.session() as s:
            return int(await s.scalar(select(func.count()).select_from(outbox)) or 0)

    async def wait_left(check, timeout: float) -> int:  # type: ignore[no-untyped-def]
        deadline = asyncio.get_running_loop().time() + timeout
        while not check(now_left := await left()) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return now_left

    # All three start at once and wait for a word on stdin: a start (importing the kit) takes seconds, 20 s on
    # a loaded machine.
    relays = [ChildProcess(["-c", script], held=True).start() for script in scripts]
    try:
        remaining = len(events)
        for relay in relays[:2]:
            relay.release()
            assert await asyncio.to_thread(relay.wait, 120) == -signal.SIGKILL
            now_left = await left()
            assert 0 < now_left < remaining, (
                "a relay killed mid-batch committed no batch, or every batch"
            )
            remaining = now_left
        relays[2].release()
        assert await wait_left(lambda n: n == 0, timeout=120) == 0, "relay never finished"
    finally:
        for relay in relays:
            relay.kill()
    consumer = consumer_for(db, js, company)
    await drain(consumer, company, len(events), timeout=60)
    async with db.session() as s:
        rows = (await s.execute(select(applied.c.event_id, applied.c.n))).all()
    assert {r.event_id for r in rows} == {e.event_id for e in events}
    assert all(r.n == 1 for r in rows), "an event was applied twice"


async def test_redelivered_event_is_applied_once(db: Database, js) -> None:  # type: ignore[no-untyped-def]
    company = uuid.uuid4()
    event = lead_event(company)
    consumer = consumer_for(db, js, company)
    await consumer.subscribe()
    # the same event published twice under different message ids, past JetStream's de-duplication
    await js.publish(
        event.subject,
        event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": "a-" + str(event.event_id)},
    )
    await js.publish(
        event.subject,
        event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": "b-" + str(event.event_id)},
    )
    await drain(consumer, company, 1)
    async with db.session() as s:
        assert (
            await s.execute(select(applied.c.n).where(applied.c.event_id == event.event_id))
        ).scalar_one() == 1


async def test_invalid_payload_is_terminated_and_logged(  # type: ignore[no-untyped-def]
    db: Database, js, caplog: pytest.LogCaptureFixture
) -> None:
    company = uuid.uuid4()
    good = lead_event(company)
    consumer = consumer_for(db, js, company)
    await consumer.subscribe()
    await js.publish(
        "leadline.lead.created.v1", b'{"type": "lead.created", "version": 1, "payload": 42}'
    )
    await js.publish(good.subject, good.model_dump_json().encode())
    with caplog.at_level(logging.ERROR, logger="leadline.consumer"):
        await drain(consumer, company, 1)
    info = await js.consumer_info("LEADLINE_EVENTS", consumer.durable)
    assert info.num_ack_pending == 0 and info.num_redelivered == 0
    assert info.num_pending == 0
    assert any("invalid event" in r.getMessage() for r in caplog.records)
    async with db.session() as s:
        assert await s.scalar(select(func.count()).select_from(applied)) == 1


async def test_transient_failure_is_retried_permanent_is_terminated(db: Database, js) -> None:  # type: ignore[no-untyped-def]
    company = uuid.uuid4()
    flaky, doomed = lead_event(company), lead_event(company)
    attempts: dict[uuid.UUID, int] = {}

    async def handler(session: AsyncSession, event: Event) -> None:
        attempts[event.event_id] = attempts.get(event.event_id, 0) + 1
        if event.event_id == doomed.event_id:
            raise PermanentError("refers to nothing")
        if attempts[event.event_id] < 3:
            raise ConnectionError("database blinked")
        await count_applications(session, event)

    consumer = consumer_for(db, js, company, handler)
    consumer.max_backoff = 0.2
    await consumer.subscribe()
    for e in (flaky, doomed):
        await js.publish(e.subject, e.model_dump_json().encode())
    await drain(consumer, company, 1, timeout=20)
    async with db.session() as s:
        assert (await s.execute(select(applied.c.event_id))).scalars().all() == [flaky.event_id]
    assert attempts[flaky.event_id] >= 3
    info = await js.consumer_info("LEADLINE_EVENTS", consumer.durable)
    assert info.num_ack_pending == 0


async def test_handlers_derive_their_subjects_and_apply_one_handler_per_type() -> None:
    seen: list[str] = []

    async def created(session: AsyncSession, event: LeadCreatedV1) -> None:
        seen.append(f"created {event.payload.lead_id}")

    async def company(session: AsyncSession, event: CompanyUpdatedV1) -> None:
        seen.append(f"company {event.payload.name}")

    handlers = Handlers().on(LeadCreatedV1, created).on(CompanyUpdatedV1, company)
    assert handlers.subjects == ["leadline.lead.created.v1", "leadline.company.updated.v1"]
    lead = lead_event(uuid.uuid4())
    session: Any = None  # the handlers here never touch it
    await handlers(session, lead)
    await handlers(
        session, CompanyUpdatedV1(company_id=uuid.uuid4(), payload=CompanyPayload(name="Acme"))
    )
    user = UserPayload(user_id=uuid.uuid4(), email="a@b.example", role="salesperson")
    await handlers(session, UserDeletedV1(company_id=uuid.uuid4(), payload=user))
    assert seen == [f"created {lead.payload.lead_id}", "company Acme"]
    with pytest.raises(AssertionError):
        handlers.on(LeadCreatedV1, created)


async def test_a_repeatable_event_is_applied_without_a_processed_row(db: Database, js) -> None:  # type: ignore[no-untyped-def]
    company = uuid.uuid4()

    async def own_company_only(session: AsyncSession, event: Event) -> None:
        if event.company_id == company:
            await count_applications(session, event)

    consumer = EventConsumer(
        db=db,
        js=js,
        processed=processed,
        durable=f"kittest-{uuid.uuid4().hex[:8]}",
        handlers=Handlers()
        .on(LeadCreatedV1, own_company_only)
        .on(CompanyUpdatedV1, own_company_only, repeatable=True),
    )
    await consumer.subscribe()
    claimed = lead_event(company)
    repeatable = CompanyUpdatedV1(company_id=company, payload=CompanyPayload(name="Acme"))
    for event in (claimed, repeatable):
        await js.publish(event.subject, event.model_dump_json().encode())
    await drain(consumer, company, 2)
    async with db.session() as s:
        assert set((await s.execute(select(applied.c.event_id))).scalars()) == {
            claimed.event_id,
            repeatable.event_id,
        }
        ours = processed.c.event_id.in_([claimed.event_id, repeatable.event_id])
        rows = set((await s.execute(select(processed.c.event_id).where(ours))).scalars())
    assert rows == {claimed.event_id}  # the repeatable one cost no write of its own
