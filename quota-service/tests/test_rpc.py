"""The NATS responders of a running quota service: exactness, settling, malformed asks, events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx
import pytest
from nats.aio.client import Client
from sqlalchemy import func, select

from leadline_kit.db import Database
from leadline_kit.infra import free_port
from leadline_kit.testing.clients import running_app
from leadline_proto.events import Event
from leadline_proto.requests import (
    QuotaReserveReply,
    QuotaReserveRequest,
    QuotaSettleReply,
    QuotaSettleRequest,
    SyncAllowanceReply,
    SyncAllowanceRequest,
)
from leadline_proto.subjects import (
    RPC_MAILBOX_SLOT_CLAIM,
    RPC_QUOTA_CHECK,
    RPC_QUOTA_COMMIT,
    RPC_QUOTA_RELEASE,
    RPC_QUOTA_RESERVE,
    RPC_SYNC_ALLOWANCE,
)
from leadline_quota.clock import MovableClock
from leadline_quota.config import Settings
from leadline_quota.main import create_app
from leadline_quota.models import reservation
from leadline_quota.plans.service import set_plan

StreamEvents = Callable[[str, uuid.UUID, int], Awaitable[list[Event]]]


async def reserve(
    nc: Client, request: QuotaReserveRequest, subject: str = RPC_QUOTA_RESERVE
) -> QuotaReserveReply:
    msg = await nc.request(subject, request.model_dump_json().encode(), timeout=10)
    return QuotaReserveReply.model_validate_json(msg.data)


async def settle(
    nc: Client, subject: str, company: uuid.UUID, reservation_id: uuid.UUID
) -> QuotaSettleReply:
    msg = await nc.request(
        subject,
        QuotaSettleRequest(company_id=company, reservation_id=reservation_id)
        .model_dump_json()
        .encode(),
        timeout=10,
    )
    return QuotaSettleReply.model_validate_json(msg.data)


async def test_fifty_concurrent_reservers_get_exactly_the_limit(
    quota_service: httpx.AsyncClient, nc: Client, db: Database, stream_events: StreamEvents
) -> None:
    company, key = uuid.uuid4(), f"smtp:{uuid.uuid4()}"
    ask = QuotaReserveRequest(
        company_id=company,
        account_key=key,
        provider="custom",
        recipients=1,
        size_bytes=2000,
        overrides={"messages_per_day": 100},
    )

    async def reserver() -> int:
        return sum([(await reserve(nc, ask)).granted for _ in range(4)])

    granted = sum(await asyncio.gather(*(reserver() for _ in range(50))))
    assert granted == 100
    async with db.session() as session:
        assert (
            await session.scalar(
                select(func.count())
                .select_from(reservation)
                .where(reservation.c.company_id == company)
            )
            == 100
        )
    refusals = await stream_events("leadline.quota.exceeded.v1", company, 100)
    assert len(refusals) == 100
    assert {e.payload.limit for e in refusals} == {"messages_per_day"}  # type: ignore[union-attr]


async def test_reserve_commit_release_and_check(
    quota_service: httpx.AsyncClient, nc: Client, clock: MovableClock
) -> None:
    company, key = uuid.uuid4(), f"mailbox:{uuid.uuid4()}"
    ask = QuotaReserveRequest(
        company_id=company,
        account_key=key,
        provider="gmail",
        recipients=2,
        size_bytes=5000,
        ttl_seconds=30,
        overrides={"messages_per_hour": 2},
    )
    first, second = await reserve(nc, ask), await reserve(nc, ask)
    assert first.granted and second.granted and first.reservation_id and second.reservation_id
    check = await reserve(nc, ask, RPC_QUOTA_CHECK)
    assert (check.granted, check.limit) == (False, "messages_per_hour")
    assert check.retry_at == clock.now + timedelta(seconds=30)  # the uncommitted ones expire first

    assert (await settle(nc, RPC_QUOTA_COMMIT, company, first.reservation_id)).ok
    assert (await settle(nc, RPC_QUOTA_RELEASE, company, second.reservation_id)).ok
    assert (await reserve(nc, ask, RPC_QUOTA_CHECK)).granted  # the check reserved nothing
    assert (await reserve(nc, ask)).granted
    assert not (await reserve(nc, ask)).granted
    unknown = await settle(nc, RPC_QUOTA_COMMIT, company, uuid.uuid4())
    assert (unknown.ok, unknown.detail) == (False, "no such reservation")
    other_company = await settle(nc, RPC_QUOTA_RELEASE, uuid.uuid4(), first.reservation_id)
    assert not other_company.ok


async def test_a_release_that_overtakes_its_reserve_leaves_nothing_reserved(
    quota_service: httpx.AsyncClient, nc: Client, db: Database
) -> None:
    # A sender that got no answer to its reserve (a loaded quota service) releases the id it chose at once;
    # the release can arrive before the reserve, which must then be refused, not hold capacity until its TTL.
    company, reservation_id = uuid.uuid4(), uuid.uuid4()
    early = await settle(nc, RPC_QUOTA_RELEASE, company, reservation_id)
    assert (early.ok, early.detail) == (False, "no such reservation")
    late = await reserve(
        nc,
        QuotaReserveRequest(
            company_id=company,
            account_key=f"smtp:{uuid.uuid4()}",
            recipients=1,
            size_bytes=100,
            reservation_id=reservation_id,
        ),
    )
    assert not late.granted and late.detail == "this reservation was released"
    async with db.session() as session:
        states = (
            await session.scalars(
                select(reservation.c.state).where(reservation.c.company_id == company)
            )
        ).all()
    assert states == ["released"]
    assert (
        await settle(nc, RPC_QUOTA_RELEASE, company, reservation_id)
    ).ok  # idempotent: already released


@pytest.mark.parametrize(
    "subject,body",
    [
        (RPC_QUOTA_RESERVE, b"not json"),
        (RPC_QUOTA_RESERVE, json.dumps({"company_id": "x", "account_key": "smtp:1"}).encode()),
        (
            RPC_QUOTA_RESERVE,
            json.dumps(
                {
                    "company_id": str(uuid.uuid4()),
                    "account_key": "smtp:nope",
                    "recipients": 1,
                    "size_bytes": 1,
                }
            ).encode(),
        ),
        (
            RPC_QUOTA_CHECK,
            json.dumps(
                {
                    "company_id": str(uuid.uuid4()),
                    "account_key": f"smtp:{uuid.uuid4()}",
                    "recipients": 1,
                    "size_bytes": 1,
                    "overrides": {"bogus": 1},
                }
            ).encode(),
        ),
        (RPC_QUOTA_COMMIT, b"{}"),
        (RPC_MAILBOX_SLOT_CLAIM, json.dumps({"company_id": str(uuid.uuid4())}).encode()),
        (
            RPC_SYNC_ALLOWANCE,
            json.dumps(
                {"company_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()), "count": -1}
            ).encode(),
        ),
    ],
    # named, not shown: a body holds a random id, and parallel workers must collect the same test names
    ids=[
        "reserve-not-json",
        "reserve-bad-company",
        "reserve-bad-account",
        "check-bad-override",
        "commit-empty",
        "slot-claim-no-mailbox",
        "allowance-negative",
    ],
)
async def test_malformed_requests_get_a_reply_with_detail(
    quota_service: httpx.AsyncClient, nc: Client, subject: str, body: bytes
) -> None:
    msg = await nc.request(subject, body, timeout=10)
    reply = json.loads(msg.data)
    assert reply["detail"].startswith("invalid request")
    assert reply.get("granted", False) is False and reply.get("ok", False) is False
    # the responder is still there
    ok = await reserve(
        nc,
        QuotaReserveRequest(
            company_id=uuid.uuid4(), account_key=f"smtp:{uuid.uuid4()}", recipients=1, size_bytes=1
        ),
    )
    assert ok.granted


async def test_unknown_account_and_provider_get_the_custom_defaults(
    quota_service: httpx.AsyncClient, nc: Client
) -> None:
    ask = QuotaReserveRequest(
        company_id=uuid.uuid4(),
        account_key=f"smtp:{uuid.uuid4()}",
        provider="someone-we-never-heard-of",
        recipients=101,
        size_bytes=1,
    )
    refused = await reserve(nc, ask)
    assert (refused.granted, refused.limit, refused.retry_at) == (
        False,
        "recipients_per_message",
        None,
    )
    assert (await reserve(nc, ask.model_copy(update={"recipients": 100}))).granted


async def test_legacy_free_plan_allows_100_synced_emails_per_user_per_day(
    quota_service: httpx.AsyncClient, nc: Client, db: Database, clock: MovableClock
) -> None:
    company, user, other_user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    async def allowance(user_id: uuid.UUID, count: int) -> SyncAllowanceReply:
        msg = await nc.request(
            RPC_SYNC_ALLOWANCE,
            SyncAllowanceRequest(company_id=company, user_id=user_id, count=count)
            .model_dump_json()
            .encode(),
            timeout=10,
        )
        return SyncAllowanceReply.model_validate_json(msg.data)

    unlimited = await allowance(user, 5000)
    assert (unlimited.allowed, unlimited.resets_at) == (5000, None)
    async with db.session() as session:
        await set_plan(session, company, "legacy_free", clock())
    results = await asyncio.gather(*(allowance(user, 30) for _ in range(5)))
    assert sum(r.allowed for r in results) == 100
    assert (await allowance(other_user, 60)).allowed == 60
    midnight = clock.now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert results[0].resets_at == midnight.replace(day=midnight.day + 1)
    clock.set(results[0].resets_at)
    assert (await allowance(user, 150)).allowed == 100


async def test_a_database_outage_is_answered_not_left_to_time_out(
    nats_url: str, nc: Client, clock: MovableClock
) -> None:
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/quota"
    settings = Settings(
        database_url=nowhere,
        nats_url=nats_url,
        identity_secret="x",
        environment="test",
        consumer_prefix=f"quota-test-{uuid.uuid4().hex[:10]}",
    )
    async with running_app(create_app(settings, clock)):
        reply = await reserve(
            nc,
            QuotaReserveRequest(
                company_id=uuid.uuid4(),
                account_key=f"smtp:{uuid.uuid4()}",
                recipients=1,
                size_bytes=1,
            ),
        )
    assert (reply.granted, reply.reservation_id) == (False, None)
    assert reply.detail == "the service failed to answer; retry later"
