"""Lead service benchmark: timeline reads among 100,000 leads, and timeline events applied per second.

Command (from the repository root):

    uv run python bench/leads/run.py [--leads 100000] [--busy-events 10000] [--events 20000]

It starts its own PostgreSQL and NATS JetStream on loopback (throwaway data,
fsync off as in the tests), migrates the lead schema and seeds with COPY:
``--leads`` leads in one company, one "busy" lead holding ``--busy-events``
timeline events, and one event for each of 200,000 other leads' messages.

1. Timeline read: ``GET /v1/leads/{busy}/timeline`` (300 newest events, R7),
   through the real app in-process (identity check, query, JSON), p50/p99
   over 300 calls.  Reference: the same SQL fetched with raw asyncpg.
2. Apply: ``--events`` ``mail.synced`` events (about 1 in 5 a second copy of
   the same message from a colleague's mailbox, 1 in 10 involving two leads)
   are published to the stream first; then the lead service's consumer
   applies them, and events/s is measured until it has acknowledged them
   all.  Reference: the kit's default path (the same handlers called once per
   event) on an identical copy of the database, over the first 5,000 events.
"""  # noqa: E501

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from nats.js import JetStreamContext

from leadline_kit import bus
from leadline_kit.consumer import EventConsumer
from leadline_kit.db import Database, asyncpg_dsn
from leadline_kit.infra import NatsServer, PostgresServer, free_port
from leadline_kit.migrations import upgrade
from leadline_kit.testing.clients import as_caller, make_identity, running_app
from leadline_lead.config import Settings
from leadline_lead.consumers import EVENTS, apply_event, apply_events
from leadline_lead.main import create_app
from leadline_lead.models import processed
from leadline_proto.events import MailPayload, MailSyncedV1
from leadline_proto.subjects import STREAM_NAME

SECRET = "bench-identity-secret"
OTHER_EVENTS = 200_000
READS = 300
REFERENCE_EVENTS = 5_000
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def seed(dsn: str, company: uuid.UUID, leads: int, busy_events: int) -> uuid.UUID:
    conn = await asyncpg.connect(dsn)
    try:
        now = datetime.now(UTC)
        lead_ids = [uuid.uuid4() for _ in range(leads)]
        stages = ("new", "contacted", "qualified", "proposal", "negotiation", "won", "lost")
        await conn.copy_records_to_table(
            "lead",
            schema_name="lead",
            columns=[
                "id",
                "company_id",
                "name",
                "account_name",
                "stage",
                "created_at",
                "updated_at",
            ],
            records=[
                (lid, company, f"Lead {i}", "", stages[i % 7], now, now)
                for i, lid in enumerate(lead_ids)
            ],
        )
        await conn.copy_records_to_table(
            "lead_address",
            schema_name="lead",
            columns=["company_id", "address", "domain", "lead_id", "position"],
            records=[
                (company, f"lead{i}@client{i % 977}.example", f"client{i % 977}.example", lid, 0)
                for i, lid in enumerate(lead_ids)
            ],
        )
        mailboxes = [uuid.uuid4() for _ in range(20)]

        def event(i: int, lead_index: int) -> tuple[Any, ...]:
            address = f"lead{lead_index}@client{lead_index % 977}.example"
            return (
                company,
                lead_ids[lead_index],
                f"seed{i}@mail.example",
                f"<seed{i}@mail.example>",
                "email_received",
                "personal",
                T0 + timedelta(minutes=i),
                "inbound",
                address,
                "",
                ["me@mycorp.example"],
                [],
                [address],
                f"Subject {i}",
                "Some text of the message " * 4,
                mailboxes[i % 20],
                None,
                "inbox",
            )

        columns = [
            "company_id",
            "lead_id",
            "message_key",
            "message_id",
            "kind",
            "category",
            "occurred_at",
            "direction",
            "from_address",
            "from_name",
            "to_addresses",
            "cc_addresses",
            "matched_addresses",
            "subject",
            "snippet",
            "mailbox_id",
            "user_id",
            "folder",
        ]
        await conn.copy_records_to_table(
            "timeline_event",
            schema_name="lead",
            columns=columns,
            records=[event(i, 0) for i in range(busy_events)],
        )
        await conn.copy_records_to_table(
            "timeline_event",
            schema_name="lead",
            columns=columns,
            records=[event(busy_events + i, 1 + i % (leads - 1)) for i in range(OTHER_EVENTS)],
        )
        await conn.execute(
            "INSERT INTO lead.timeline_event_source (timeline_event_id, source, company_id, "
            "mailbox_id)"
            " SELECT id, mailbox_id::text, company_id, mailbox_id FROM lead.timeline_event"
        )
        await conn.execute("VACUUM ANALYZE")
        return lead_ids[0]
    finally:
        await conn.close()


async def measure_reads(
    settings: Settings, company: uuid.UUID, lead_id: uuid.UUID, dsn: str
) -> dict[str, float]:
    app = create_app(settings)
    async with running_app(app) as client:
        api = as_caller(client, make_identity("salesperson", company), SECRET)
        url = f"/v1/leads/{lead_id}/timeline"
        for _ in range(20):
            assert (await api.get(url)).status_code == 200
        samples = []
        for _ in range(READS):
            started = time.perf_counter()
            response = await api.get(url)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200 and len(response.json()["items"]) == 300
        searches: dict[str, list[float]] = {"address": [], "name": []}
        for i in range(50):
            for kind, q in (("address", f"lead{4321 + i}@"), ("name", f"Lead {7654 + i}")):
                started = time.perf_counter()
                response = await api.get("/v1/leads", params={"q": q})
                searches[kind].append(time.perf_counter() - started)
                assert response.status_code == 200 and response.json()["items"]
    conn = await asyncpg.connect(dsn)
    try:
        query = (
            "SELECT * FROM lead.timeline_event WHERE lead_id = $1 ORDER BY occurred_at DESC, id "
            "DESC LIMIT 300"
        )
        raw = []
        for i in range(READS + 20):
            started = time.perf_counter()
            rows = await conn.fetch(query, lead_id)
            if i >= 20:
                raw.append(time.perf_counter() - started)
            assert len(rows) == 300
    finally:
        await conn.close()
    return {
        "p50": percentile(samples, 50),
        "p99": percentile(samples, 99),
        "search_address_p50": percentile(searches["address"], 50),
        "search_name_p50": percentile(searches["name"], 50),
        "raw_p50": percentile(raw, 50),
        "raw_p99": percentile(raw, 99),
    }


def mail_events(company: uuid.UUID, leads: int, count: int) -> list[MailSyncedV1]:
    rng = random.Random(7)
    events: list[MailSyncedV1] = []
    while len(events) < count:
        n = len(events)
        lead_index = rng.randrange(1, leads)
        to = ["me@mycorp.example"]
        if n % 10 == 0:
            other = rng.randrange(1, leads)
            to.append(f"lead{other}@client{other % 977}.example")
        payload = MailPayload(
            message_id=f"<bench{n}@mail.example>",
            mailbox_id=uuid.uuid4(),
            user_id=uuid.uuid4(),
            folder="inbox",
            direction="inbound",
            from_address=f"lead{lead_index}@client{lead_index % 977}.example",
            from_name="A Lead",
            to=to,
            subject=f"Re: offer {n}",
            sent_at=T0 + timedelta(days=400, seconds=n),
            text="",
            html="<p>Thanks for the <b>offer</b>, we will look at it &amp; come back.</p>" * 3,
        )
        events.append(MailSyncedV1(company_id=company, payload=payload))
        if n % 5 == 0 and len(events) < count:  # the same message in a colleague's mailbox
            events.append(
                MailSyncedV1(
                    company_id=company,
                    payload=payload.model_copy(update={"mailbox_id": uuid.uuid4()}),
                )
            )
    return events


async def measure_apply(js: JetStreamContext, consumer: EventConsumer, count: int) -> float:
    """Events per second from the consumer's start until it has acknowledged ``count`` events."""
    task = asyncio.create_task(consumer.run())
    started = time.perf_counter()
    try:
        while True:
            await asyncio.sleep(0.05)
            try:
                info = await js.consumer_info(STREAM_NAME, consumer.durable)
            except Exception:  # noqa: S112 - not created yet
                continue
            if info.ack_floor.stream_seq >= count:
                break
        elapsed = time.perf_counter() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return count / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--busy-events", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    company = uuid.uuid4()
    with tempfile.TemporaryDirectory(prefix="bench-leads-") as tmp:
        postgres = PostgresServer(Path(tmp) / "pg", free_port(), fast_unsafe=True)
        nats_server = NatsServer(Path(tmp) / "nats", free_port())
        postgres.start()
        nats_server.start()
        try:
            admin = await asyncpg.connect(asyncpg_dsn(postgres.admin_url))
            await admin.execute("CREATE DATABASE bulk")
            url = postgres.url("bulk")
            await upgrade("leadline_lead", url)
            started = time.perf_counter()
            busy = await seed(asyncpg_dsn(url), company, args.leads, args.busy_events)
            print(
                f"seeded {args.leads:,} leads and {args.busy_events + OTHER_EVENTS:,} timeline "
                f"events in {time.perf_counter() - started:.1f}s",
                flush=True,
            )
            await admin.execute("CREATE DATABASE per_event TEMPLATE bulk")
            await admin.close()

            settings = Settings(
                DATABASE_URL=url,
                NATS_URL=nats_server.url,
                identity_secret=SECRET,
                consumer_prefix="bench-app",
            )
            reads = await measure_reads(settings, company, busy, asyncpg_dsn(url))

            nc, js = await bus.connect(nats_server.url, "bench-leads")
            await bus.ensure_stream(js)
            events = mail_events(company, args.leads, args.events)
            acks = [
                await js.publish(
                    e.subject,
                    e.model_dump_json().encode(),
                    headers={"Nats-Msg-Id": str(e.event_id)},
                )
                for e in events[:1]
            ]
            acks += await asyncio.gather(
                *(
                    js.publish(
                        e.subject,
                        e.model_dump_json().encode(),
                        headers={"Nats-Msg-Id": str(e.event_id)},
                    )
                    for e in events[1:]
                )
            )
            total = max(ack.seq for ack in acks)

            bulk_db = Database(url, "lead")
            bulk = EventConsumer(
                db=bulk_db,
                js=js,
                processed=processed,
                durable="bench-bulk",
                handlers=EVENTS,
                handler=apply_event,
                batch_handler=apply_events,
                batch_size=500,
            )
            bulk_rate = await measure_apply(js, bulk, total)
            per_event_db = Database(postgres.url("per_event"), "lead")
            per_event = EventConsumer(
                db=per_event_db,
                js=js,
                processed=processed,
                durable="bench-per-event",
                handlers=EVENTS,
                handler=apply_event,
                batch_size=500,
            )
            # the slow reference is measured over the first events only, to keep the run short
            per_event_rate = await measure_apply(js, per_event, min(total, REFERENCE_EVENTS))
            async with bulk_db.session() as s:
                applied = (
                    await s.execute(processed.select().where(processed.c.consumer == "bench-bulk"))
                ).all()
            assert len(applied) == len(events), (len(applied), len(events))
            await bulk_db.dispose()
            await per_event_db.dispose()
            await nc.close()
        finally:
            nats_server.stop()
            postgres.stop()

    print()
    print(
        f"command: uv run python bench/leads/run.py --leads {args.leads} --busy-events "
        f"{args.busy_events} --events {args.events}"
    )
    print(
        f"timeline read, {args.busy_events:,}-event lead among {args.leads:,} leads, 300 events "
        f"via HTTP app: p50 {reads['p50'] * 1000:.1f} ms, p99 {reads['p99'] * 1000:.1f} ms"
    )
    print(
        f"  reference raw asyncpg query: p50 {reads['raw_p50'] * 1000:.1f} ms, p99 "
        f"{reads['raw_p99'] * 1000:.1f} ms"
        f"  -> app/raw p50 ratio {reads['p50'] / reads['raw_p50']:.1f}x"
    )
    print(
        f"lead search among {args.leads:,} leads via HTTP app: by address prefix p50 "
        f"{reads['search_address_p50'] * 1000:.1f} ms, by name p50 "
        f"{reads['search_name_p50'] * 1000:.1f} ms"
    )
    print(
        f"timeline apply from the stream ({len(events):,} mail.synced events): {bulk_rate:,.0f} "
        f"events/s"
    )
    print(
        f"  reference kit per-event handler path: {per_event_rate:,.0f} events/s"
        f"  -> bulk/per-event ratio {bulk_rate / per_event_rate:.1f}x"
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
