"""The lead consumer killed mid-stream and restarted loses nothing and applies nothing twice."""

from __future__ import annotations

import asyncio
import random
import signal
import uuid

import asyncpg
import pytest
from leadtest import publish, synced
from nats.js import JetStreamContext

from leadline_kit.db import asyncpg_dsn
from leadline_kit.infra import ChildProcess
from leadline_lead.config import Settings

CONSUMER_SCRIPT = """
import asyncio
from leadline_kit.testing.clients import running_app
from leadline_lead.config import Settings
from leadline_lead.main import create_app

async def main():
    settings = Settings(DATABASE_URL={url!r}, NATS_URL={nats!r}, consumer_prefix={durable!r},
                        consumer_deliver_since={since!r}, consumer_batch_size=100, consumer_ack_wait=1.0,
                        log_level="WARNING")
    async with running_app(create_app(settings)):
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def start_consumer(script: str) -> ChildProcess:
    consumer = ChildProcess(["-c", script], output=True).start()
    try:
        assert await asyncio.to_thread(consumer.line, 60) == "ready"
    except BaseException:
        consumer.kill()
        raise
    return consumer


@pytest.mark.slow
async def test_killed_consumer_resumes_without_loss_or_duplicates(
    settings: Settings, js: JetStreamContext
) -> None:
    company = uuid.uuid4()
    lead_id = uuid.uuid4()
    count = 3000
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))

    async def applied() -> int:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM lead.timeline_event_source WHERE company_id = $1", company
            )
        )

    try:
        await conn.execute(
            "INSERT INTO lead.lead (id, company_id, name, stage) VALUES ($1, $2, 'Lead', 'new')",
            lead_id,
            company,
        )
        await conn.execute(
            "INSERT INTO lead.lead_address (company_id, address, domain, lead_id) "
            "VALUES ($1, 'lead@example.com', 'example.com', $2)",
            company,
            lead_id,
        )
        mailboxes = [uuid.uuid4(), uuid.uuid4()]
        # every message arrives twice, once through each mailbox
        events = [
            synced(
                company,
                message_id=f"<k{i // 2}@example.com>",
                from_address="lead@example.com",
                to=["me@mycorp.example"],
                mailbox_id=mailboxes[i % 2],
                minutes=i // 2,
            )
            for i in range(count)
        ]
        await publish(js, *events)
        script = CONSUMER_SCRIPT.format(
            url=settings.database_url,
            nats=settings.nats_url,
            durable=settings.consumer_prefix,
            since=settings.consumer_deliver_since.isoformat()
            if settings.consumer_deliver_since
            else None,
        )
        kills = 0
        while kills < 6 and await applied() < count:
            consumer = await start_consumer(script)
            await asyncio.sleep(random.uniform(0.2, 0.8))
            assert consumer.kill() == -signal.SIGKILL
            kills += 1
        # a last run that is left alone finishes the stream, including what the killed ones held
        consumer = await start_consumer(script)
        try:
            deadline = asyncio.get_running_loop().time() + 60
            while await applied() < count and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.2)
        finally:
            consumer.kill()
        events_count = await conn.fetchval(
            "SELECT count(*) FROM lead.timeline_event WHERE lead_id = $1", lead_id
        )
        sources = await conn.fetch(
            "SELECT timeline_event_id, count(*) AS n FROM lead.timeline_event_source WHERE company_id = $1 GROUP BY 1",
            company,
        )
        claimed = await conn.fetchval(
            "SELECT count(*) FROM lead.processed_event WHERE consumer = $1",
            settings.consumer_prefix,
        )
    finally:
        await conn.close()
    assert kills >= 1
    assert events_count == count // 2, "a message was lost or split"
    assert len(sources) == count // 2 and all(row["n"] == 2 for row in sources), "a source was lost"
    assert (
        claimed >= count
    )  # every event recorded once as processed (others' companies' events too)
