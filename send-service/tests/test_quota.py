"""Quota (R14, R15): never sent without a reservation, rotation to the next campaigns account, 429 at the API."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import nats
from prometheus_client import REGISTRY

from leadline_kit.db import asyncpg_dsn
from leadline_kit.infra import PostgresServer
from leadline_kit.testing.clients import running_app
from leadline_kit.testing.fixtures import migrated_database
from leadline_proto.requests import QuotaReserveRequest
from leadline_quota.config import Settings as QuotaSettings
from leadline_quota.main import create_app as create_quota_app
from leadline_send.delivery.quota import QuotaClient

from .conftest import SECRET, HarnessFactory, SmtpFactory


async def test_waits_for_the_quota_service_then_rotates_then_refuses(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    mailboxes: object,
    postgres: PostgresServer,
    nats_url: str,
) -> None:
    app = await send_service(smtp_connections=1)
    first, second = smtp_server(tls="starttls"), smtp_server(tls="implicit")
    a = await app.add_account(
        first, name="A", display_order=0, max_per_month=1, from_email="a@company.example.com"
    )
    b = await app.add_account(
        second, name="B", display_order=1, max_per_month=1, from_email="b@company.example.com"
    )
    assert (await app.admin.get("/v1/smtp-accounts")).json()[0]["id"] == a["id"]

    # no quota service: accepted, but nothing goes out without a reservation
    messages = []
    for n in range(2):
        response = await app.user.post(
            "/v1/messages",
            json={
                "category": "marketing",
                "to": [f"lead{n}@example.org"],
                "subject": f"offer {n}",
                "text": "x",
            },
        )
        assert response.status_code == 202, response.text
        messages.append(response.json())
    waiting = await app.wait_for(messages[1]["id"], {"deferred"})
    assert (
        waiting["state"] == "deferred" and "quota service did not answer" in waiting["last_error"]
    )
    assert [
        r for r in first.received + second.received if r.message["Subject"].startswith("offer")
    ] == []

    quota_url = await migrated_database(postgres, "leadline_quota")
    quota = QuotaSettings(
        database_url=quota_url,
        nats_url=nats_url,
        identity_secret=SECRET,
        environment="test",
        consumer_prefix=f"quota-send-test-{uuid.uuid4().hex[:8]}",
    )
    async with running_app(create_quota_app(quota)):
        done = [await app.wait_for(m["id"], {"sent", "failed"}) for m in messages]
        assert [d["state"] for d in done] == ["sent", "sent"]
        # A allows one message a month: the second went through B, with B's From (R15)
        assert sorted(d["account"] for d in done) == sorted([f"smtp:{a['id']}", f"smtp:{b['id']}"])
        via_b = next(d for d in done if d["account"] == f"smtp:{b['id']}")
        [copy] = second.handler.by_message_id(via_b["message_id"])
        assert copy.message["From"].addresses[0].addr_spec == "b@company.example.com"
        assert copy.message["Message-ID"] == via_b["message_id"]

        # both accounts are out of quota: refused at the API with when it resets
        refused = await app.user.post(
            "/v1/messages",
            json={
                "category": "marketing",
                "to": ["lead9@example.org"],
                "subject": "offer 9",
                "text": "x",
            },
        )
        assert refused.status_code == 429, refused.text
        problem = refused.json()
        assert (
            problem["type"].endswith("/quota-exceeded") and problem["limit"] == "messages_per_month"
        )
        assert datetime.fromisoformat(problem["retry_at"]) > datetime.fromisoformat(
            via_b["sent_at"]
        )
        assert int(refused.headers["Retry-After"]) > 0


async def _quota_usage(quota_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(asyncpg_dsn(quota_url))
    try:
        rows = await conn.fetch(
            "SELECT state, sum(messages) AS messages FROM quota.reservation GROUP BY state"
        )
    finally:
        await conn.close()
    return {r["state"]: int(r["messages"]) for r in rows}


def offers(count: int) -> dict[str, Any]:
    """A batch of ``count`` marketing messages to leads, subjects ``offer 0``…"""
    return {
        "messages": [
            {
                "category": "marketing",
                "to": [f"lead{n}@example.org"],
                "subject": f"offer {n}",
                "text": "x",
            }
            for n in range(count)
        ]
    }


async def settled_usage(quota_url: str, seconds: float = 15.0) -> dict[str, int]:
    """The quota service's messages by reservation state, once none is left ``reserved`` (or after
    ``seconds``): what the workers' leases committed and gave back."""
    deadline = asyncio.get_running_loop().time() + seconds
    while "reserved" in (usage := await _quota_usage(quota_url)):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    return usage


async def test_quota_counts_exactly_what_reached_the_server(
    send_service: HarnessFactory, smtp_server: SmtpFactory, mailboxes: object, quota_service: str
) -> None:
    """Workers reserve for a claim of messages at once (a lease); a 4xx answer is not counted, and
    what the lease did not need is given back."""
    app = await send_service(smtp_connections=1, claim_size=16)
    server = smtp_server(tls="starttls")
    await app.add_account(server, max_per_month=100)
    server.handler.behaviour.mode = (
        "tempfail_once"  # from now on every message: 451 first, then accepted
    )
    batch = await app.user.post("/v1/messages/batch", json=offers(6))
    assert batch.status_code == 202, batch.text
    done = [await app.wait_for(m["id"], {"sent", "failed"}) for m in batch.json()["items"]]
    assert [d["state"] for d in done] == ["sent"] * 6 and all(d["attempts"] == 2 for d in done)
    assert len([r for r in server.received if r.message["Subject"].startswith("offer")]) == 6
    usage = await settled_usage(quota_service)  # the idle worker settles its lease
    assert usage.get("committed") == 6 and "reserved" not in usage


async def test_near_a_limit_each_message_asks_on_its_own(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    """A lease that does not fit is refused whole; then each message reserves alone, so exactly the
    allowance goes out and the rest waits with the limit and the time it resets."""
    app = await send_service(smtp_connections=1, claim_size=16)
    server = smtp_server(tls="starttls")
    await app.add_account(server, max_per_month=3)
    batch = await app.user.post("/v1/messages/batch", json=offers(5))
    assert batch.status_code == 202, batch.text
    done = [await app.wait_for(m["id"], {"sent", "deferred"}) for m in batch.json()["items"]]
    assert sorted(d["state"] for d in done) == ["deferred", "deferred", "sent", "sent", "sent"]
    assert len([r for r in server.received if r.message["Subject"].startswith("offer")]) == 3
    for waiting in (d for d in done if d["state"] == "deferred"):
        assert (
            "messages_per_month" in waiting["last_error"] and waiting["next_attempt_at"] is not None
        )


async def test_checks_are_answered_from_the_room_the_last_one_reported(
    quota_service: None, nats_url: str
) -> None:
    nc = await nats.connect(nats_url)
    client = QuotaClient(nc, timeout=5)
    request = QuotaReserveRequest(
        company_id=uuid.uuid4(),
        account_key=f"smtp:{uuid.uuid4()}",
        recipients=1,
        size_bytes=100,
        overrides={"messages_per_hour": 3},
    )

    def answered(answer: str) -> float:
        return (
            REGISTRY.get_sample_value(
                "leadline_send_quota_answers_total", {"ask": "check", "answer": answer}
            )
            or 0
        )

    asked, from_room = answered("granted"), answered("granted-from-room")
    try:
        replies = [await client.check(request) for _ in range(4)]
    finally:
        await nc.close()
    assert all(r.granted for r in replies)
    # the first check leaves room for 2 more: those are answered here; the fourth asks again
    assert answered("granted") - asked == 2 and answered("granted-from-room") - from_room == 2
    assert replies[0].room_messages == 2 and replies[3].room_messages == 2


async def test_a_lease_retired_by_a_claim_it_could_not_take_is_settled_by_its_last_message(
    send_service: HarnessFactory, smtp_server: SmtpFactory, mailboxes: object, quota_service: str
) -> None:
    """Two workers claim 6 messages each: the first reserves a lease of 10, which the second claim does not
    fit, so it retires with 6 in hand, before it expires.  Its last message settles it: what was sent under
    it is counted then, not left reserved (and uncounted) until the quota service's TTL.  (The second
    lease is settled by the idle worker once it expires.)"""
    app = await send_service(
        smtp_connections=2, claim_size=6, quota_lease_messages=10, quota_lease_seconds=5
    )
    server = smtp_server(tls="starttls")
    await app.add_account(server, max_per_month=100)
    # 0.05 s a message: the first worker still has its 6 in hand when the second claims
    server.handler.behaviour.mode, server.handler.behaviour.silent_seconds = "slow", 0.05
    batch = await app.user.post("/v1/messages/batch", json=offers(12))
    assert batch.status_code == 202, batch.text
    done = [await app.wait_for(m["id"], {"sent", "failed"}) for m in batch.json()["items"]]
    assert [d["state"] for d in done] == ["sent"] * 12
    usage = await settled_usage(quota_service)
    assert usage.get("committed") == 12 and "reserved" not in usage, usage


async def test_a_commit_unanswered_for_long_is_counted_once_the_quota_service_is_back(
    postgres: PostgresServer, nats_url: str
) -> None:
    """The quota service is away for longer than the five tries a settle used to make (about 8 s): the
    commit keeps trying, and once the service is back the usage is counted and the hold forgotten."""
    quota_url = await migrated_database(postgres, "leadline_quota")
    settings = QuotaSettings(
        database_url=quota_url,
        nats_url=nats_url,
        identity_secret=SECRET,
        environment="test",
        consumer_prefix=f"quota-send-test-{uuid.uuid4().hex[:8]}",
    )
    nc = await nats.connect(nats_url)
    client = QuotaClient(nc, timeout=0.5)
    company, reservation = uuid.uuid4(), uuid.uuid4()
    request = QuotaReserveRequest(
        company_id=company,
        account_key=f"smtp:{uuid.uuid4()}",
        recipients=1,
        size_bytes=100,
        reservation_id=reservation,
    )
    forgotten = asyncio.Event()

    async def forget() -> None:
        forgotten.set()

    try:
        async with running_app(create_quota_app(settings)):
            assert (await client.reserve(request)).granted
        client.commit(company, reservation, then=forget)
        await asyncio.sleep(12.0)  # the old five tries were over after 4-8 s
        assert not forgotten.is_set()
        assert await _quota_usage(quota_url) == {"reserved": 1}
        async with running_app(create_quota_app(settings)):
            await asyncio.wait_for(forgotten.wait(), 20.0)
    finally:
        await nc.close()
    assert await _quota_usage(quota_url) == {"committed": 1}
