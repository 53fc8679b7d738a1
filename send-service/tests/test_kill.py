"""SIGKILL during a batch (R21): no Message-ID reaches the server twice, nothing stays queued or sending.

The service runs as a real uvicorn process against the test PostgreSQL and
NATS; it is killed three times at random moments while 500 messages go out
over 8 connections, and restarted each time.  Messages whose attempt was
between the DATA command and the reply at a kill end ``unknown`` (at most the
8 in flight per kill); every other message ends ``sent``.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select

from leadline_kit.db import Database, asyncpg_dsn
from leadline_kit.identity import identity_headers
from leadline_kit.infra import AppProcess, PostgresServer, free_port
from leadline_kit.testing.clients import make_identity
from leadline_send.models import outgoing_message

from .conftest import SECRET, SMTP_PASSWORD, SMTP_USER, SmtpFactory

BATCH = 500
CONNECTIONS = 8
KILLS = 3
READY_SECONDS = 180.0
SETTLE_SECONDS = 180.0


@pytest.fixture
def service(send_url: str, nats_url: str, ca_file: str) -> Iterator[AppProcess]:
    env = {
        "DATABASE_URL": send_url,
        "NATS_URL": nats_url,
        "LEADLINE_IDENTITY_SECRET": SECRET,
        "LEADLINE_ENVIRONMENT": "test",
        "LEADLINE_MAIL_ALLOW_NETWORKS": "127.0.0.0/8",
        "LEADLINE_MAIL_CAFILE": ca_file,
        "LEADLINE_SMTP_CONNECTIONS": str(CONNECTIONS),
        "LEADLINE_RETRY_BASE_SECONDS": "0.2",
        "LEADLINE_RETRY_MAX_SECONDS": "1",
        "LEADLINE_RECOVERY_INTERVAL_SECONDS": "0.5",
        "LEADLINE_LOG_LEVEL": "WARNING",
        "LEADLINE_CONSUMER_PREFIX": f"send-kill-{uuid.uuid4().hex[:8]}",
    }
    process = AppProcess("leadline_send", free_port(), env)
    yield process
    process.stop()


async def start(service: AppProcess) -> None:
    """Start the service and wait until it is ready, off the event loop that serves the test's SMTP server."""
    service.start()
    # on a loaded machine the import alone takes 20-40 s: a deadline, not a count of tries
    await asyncio.to_thread(service.wait_ready, READY_SECONDS)


async def counts(db: Database) -> Counter[str]:
    async with db.session() as s:
        rows = (
            await s.execute(
                select(outgoing_message.c.state, func.count()).group_by(outgoing_message.c.state)
            )
        ).all()
    return Counter({state: n for state, n in rows})


@pytest.mark.slow
async def test_sigkill_during_a_batch(
    service: AppProcess,
    send_url: str,
    postgres: PostgresServer,
    smtp_server: SmtpFactory,
    quota_service: str,
    mailboxes: object,
) -> None:
    server = smtp_server(tls="starttls")
    identity = make_identity("administrator")
    base = f"http://127.0.0.1:{service.port}"

    def signed() -> dict[str, str]:
        return identity_headers(identity, SECRET)

    await start(service)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        created = await client.post(
            "/v1/smtp-accounts",
            headers=signed(),
            json={
                "name": "cs",
                "type": "customer_service",
                "host": "127.0.0.1",
                "port": server.port,
                "tls": "starttls",
                "username": SMTP_USER,
                "password": SMTP_PASSWORD,
                "from_email": "cs@company.example.com",
                "active": True,
            },
        )
        account = created.json()
        await client.post(
            f"/v1/smtp-accounts/{account['id']}/test-email",
            headers=signed(),
            json={"to": "admin@company.example.com"},
        )
        code = server.received[-1].message.get_content().split(" is ")[1][:6]
        confirmed = await client.post(
            f"/v1/smtp-accounts/{account['id']}/confirm", headers=signed(), json={"code": code}
        )
        assert confirmed.json()["confirmed"] is True
        server.handler.behaviour.mode, server.handler.behaviour.silent_seconds = "slow", 0.05

        semaphore = asyncio.Semaphore(16)

        async def post(n: int) -> Any:
            async with semaphore:
                response = await client.post(
                    "/v1/messages",
                    headers=signed(),
                    json={
                        "to": [f"lead{n}@example.org"],
                        "subject": f"batch {n}",
                        "text": "x" * 2000,
                    },
                )
                assert response.status_code == 202, response.text
                return response.json()

        await asyncio.gather(*(post(n) for n in range(BATCH)))
        db = Database(send_url, "send")
        try:
            for kill in range(1, KILLS + 1):
                await asyncio.sleep(random.uniform(0.3, 1.0))
                await asyncio.to_thread(service.kill)
                print(f"kill {kill}: {dict(await counts(db))}")
                await start(service)
            deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
            while asyncio.get_running_loop().time() < deadline:
                state = await counts(db)
                if state["sent"] + state["unknown"] + state["failed"] == BATCH:
                    break
                await asyncio.sleep(0.1)
        finally:
            await db.dispose()
    per_id = Counter(r.message_id for r in list(server.received)[1:])
    print(
        f"final states: {dict(state)}; messages at the SMTP server: {len(per_id)}; "
        f"delivered twice: {sum(1 for n in per_id.values() if n > 1)}"
    )
    assert max(per_id.values()) == 1, "a Message-ID reached the SMTP server twice"
    assert state["sent"] + state["unknown"] == BATCH
    assert state["queued"] == state["sending"] == state["deferred"] == state["failed"] == 0
    assert state["unknown"] <= KILLS * CONNECTIONS
    assert state["sent"] <= len(per_id) <= BATCH

    # quota: the reservations of the killed processes were settled by recovery, not left to expire,
    # and exactly what reached the server (or may have: unknown) is counted
    quota = await asyncpg.connect(asyncpg_dsn(quota_service))
    try:
        deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
        while asyncio.get_running_loop().time() < deadline:
            usage = {
                r["state"]: int(r["messages"])
                for r in await quota.fetch(
                    "SELECT state, sum(messages) AS messages FROM quota.reservation GROUP BY state"
                )
            }
            if "reserved" not in usage:
                break
            await asyncio.sleep(0.2)
    finally:
        await quota.close()
    print(f"quota: {usage}")
    assert "reserved" not in usage and usage.get("committed") == BATCH
