"""Reservations for a sender's batch of messages: all or nothing, counted by messages or recipients,
the part used committed and the rest given back; over PostgreSQL directly, NATS and HTTP."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
from nats.aio.client import Client
from sqlalchemy import func, select

from leadline_kit.db import Database
from leadline_kit.testing.clients import as_caller, make_identity
from leadline_proto.events import parse_event
from leadline_proto.requests import (
    QuotaReserveReply,
    QuotaReserveRequest,
    QuotaSettleReply,
    QuotaSettleRequest,
)
from leadline_proto.subjects import RPC_QUOTA_COMMIT, RPC_QUOTA_RESERVE
from leadline_quota.accounts.service import account_reports
from leadline_quota.clock import MovableClock
from leadline_quota.models import outbox, reservation, sending_account
from leadline_quota.reservations import service as reservations
from leadline_quota.reservations.service import Decision, InvalidAsk, ReserveAsk, Settlement

SECRET = "quota-test-identity-secret"


def smtp_key() -> str:
    return f"smtp:{uuid.uuid4()}"


def batch(
    company: uuid.UUID,
    key: str,
    messages: int,
    recipients: int | None = None,
    *,
    largest: int | None = None,
    size_bytes: int = 1000,
    **limits: int,
) -> ReserveAsk:
    return ReserveAsk(
        company,
        key,
        "custom",
        recipients or messages,
        size_bytes,
        account_settings=limits,
        messages=messages,
        largest_recipients=largest,
    )


async def reserve(db: Database, clock: MovableClock, ask: ReserveAsk) -> Decision:
    async with db.session() as session:
        return await reservations.reserve(session, ask, clock)


async def commit(
    db: Database,
    clock: MovableClock,
    company: uuid.UUID,
    decision: Decision,
    messages: int | None = None,
    recipients: int | None = None,
) -> Settlement:
    assert decision.reservation_id is not None
    async with db.session() as session:
        return await reservations.commit(
            session,
            company,
            decision.reservation_id,
            clock,
            messages=messages,
            recipients=recipients,
        )


async def row_of(db: Database, decision: Decision) -> tuple[str, int, int]:
    async with db.session() as session:
        row = (
            await session.execute(
                select(reservation.c.state, reservation.c.messages, reservation.c.recipients).where(
                    reservation.c.reservation_id == decision.reservation_id
                )
            )
        ).one()
    return row.state, row.messages, row.recipients


async def exceeded_limits(db: Database, company: uuid.UUID) -> list[str]:
    """The limits named by the company's quota.exceeded events waiting in the outbox."""
    async with db.session() as session:
        bodies = (
            (await session.execute(select(outbox.c.body).order_by(outbox.c.created_at)))
            .scalars()
            .all()
        )
    events = [parse_event(body) for body in bodies]
    return [e.payload.limit for e in events if e.company_id == company]  # type: ignore[union-attr]


async def used(db: Database, clock: MovableClock, company: uuid.UUID, limit: str) -> int | None:
    async with db.session() as session:
        [report] = await account_reports(session, company, clock(), after=None, limit=10)
    return next(r.used for r in report.limits if r.limit == limit)


async def test_a_batch_is_granted_whole_and_counts_its_messages(
    db: Database, clock: MovableClock
) -> None:
    company, key = uuid.uuid4(), smtp_key()
    limit = {"messages_per_hour": 8}
    five = await reserve(db, clock, batch(company, key, 5, **limit))
    assert five.granted
    assert await row_of(db, five) == ("reserved", 5, 5)
    assert await used(db, clock, company, "messages_per_hour") == 5

    clock.advance(minutes=1)
    four = await reserve(db, clock, batch(company, key, 4, **limit))
    assert (four.granted, four.limit, four.retry_at) == (
        False,
        "messages_per_hour",
        five.expires_at,
    )
    assert (
        four.detail
        == "messages_per_hour = 8 would be passed (5 used, 4 asked by a batch of 4 messages)"
    )
    singles = [await reserve(db, clock, batch(company, key, 1, **limit)) for _ in range(4)]
    assert [s.granted for s in singles] == [True, True, True, False]
    assert singles[3].retry_at == five.expires_at  # the uncommitted batch frees all of its 5 then
    # only the refusal of one message tells the world: the batch's sender goes on one at a time
    assert await exceeded_limits(db, company) == ["messages_per_hour"]
    async with db.session() as session:
        assert (
            await session.scalar(
                select(func.sum(reservation.c.messages)).where(reservation.c.company_id == company)
            )
            == 8
        )

    clock.set(five.expires_at)  # type: ignore[arg-type]
    assert (await reserve(db, clock, batch(company, key, 5, **limit))).granted
    assert not (await reserve(db, clock, batch(company, key, 1, **limit))).granted


async def test_committing_part_of_a_batch_gives_the_rest_back(
    db: Database, clock: MovableClock
) -> None:
    company, key = uuid.uuid4(), smtp_key()
    limit = {"messages_per_hour": 8}
    five = await reserve(db, clock, batch(company, key, 5, 10, largest=3, **limit))
    assert five.granted
    settled = await commit(db, clock, company, five, messages=2, recipients=4)
    assert (settled.ok, settled.detail) == (True, "")
    assert await row_of(db, five) == ("committed", 2, 4)
    assert await used(db, clock, company, "messages_per_hour") == 2

    six = await reserve(db, clock, batch(company, key, 6, **limit))
    assert six.granted
    assert not (await reserve(db, clock, batch(company, key, 1, **limit))).granted
    # a second commit changes nothing, whatever it names
    again = await commit(db, clock, company, five, messages=5)
    assert (again.ok, again.detail) == (True, "already committed")
    assert await row_of(db, five) == ("committed", 2, 4)
    # a commit without counts takes the whole batch, as for one message
    assert (await commit(db, clock, company, six)).ok
    assert await row_of(db, six) == ("committed", 6, 6)


async def test_recipients_limits_count_the_batch_total(db: Database, clock: MovableClock) -> None:
    company, key = uuid.uuid4(), smtp_key()
    limit = {"recipients_per_hour": 20}
    twelve = await reserve(db, clock, batch(company, key, 4, 12, largest=5, **limit))
    assert twelve.granted
    refused = await reserve(db, clock, batch(company, key, 3, 9, largest=3, **limit))
    assert (refused.granted, refused.limit) == (False, "recipients_per_hour")
    assert (
        refused.detail
        == "recipients_per_hour = 20 would be passed (12 used, 9 asked by a batch of 3 messages)"
    )
    assert (await reserve(db, clock, batch(company, key, 1, 8, **limit))).granted  # 20 of 20
    assert await used(db, clock, company, "recipients_per_hour") == 20

    assert (
        await commit(db, clock, company, twelve, recipients=7)
    ).ok  # every message sent, to 7 in all
    assert await row_of(db, twelve) == ("committed", 4, 7)
    assert (await reserve(db, clock, batch(company, key, 2, 5, largest=3, **limit))).granted
    assert not (await reserve(db, clock, batch(company, key, 1, **limit))).granted


async def test_never_is_judged_on_the_largest_message_not_the_batch(
    db: Database, clock: MovableClock
) -> None:
    company = uuid.uuid4()
    # custom: 100 recipients per message, 10 MiB per message
    fits = await reserve(
        db, clock, batch(company, smtp_key(), 3, 250, largest=100, size_bytes=10485760)
    )
    assert fits.granted

    wide = await reserve(db, clock, batch(company, smtp_key(), 3, 250, largest=101))
    assert (wide.granted, wide.limit, wide.retry_at) == (False, "recipients_per_message", None)
    assert (
        wide.detail
        == "101 exceeds recipients_per_message = 100; the batch's largest message can never pass"
    )
    big = await reserve(db, clock, batch(company, smtp_key(), 3, size_bytes=10485761))
    assert (big.granted, big.limit, big.retry_at) == (False, "message_size_bytes", None)
    one_alone = await reserve(
        db, clock, batch(company, smtp_key(), 2, 60, largest=51, recipients_per_day=50)
    )
    assert (one_alone.granted, one_alone.limit, one_alone.retry_at) == (
        False,
        "recipients_per_day",
        None,
    )

    # too big as a whole only: refused for now, never "never"
    together = await reserve(
        db, clock, batch(company, smtp_key(), 2, 60, largest=30, recipients_per_day=50)
    )
    assert (together.granted, together.limit) == (False, "recipients_per_day")
    assert together.retry_at == clock.now + timedelta(days=1)
    assert together.detail == (
        "recipients_per_day = 50 would be passed (0 used, 60 asked by a batch of 2 messages; "
        "more than the limit allows at once)"
    )
    many = await reserve(db, clock, batch(company, smtp_key(), 3, messages_per_hour=2))
    assert (many.granted, many.limit, many.retry_at) == (
        False,
        "messages_per_hour",
        clock.now + timedelta(hours=1),
    )

    assert await exceeded_limits(db, company) == []  # no batch refusal is announced
    single = await reserve(db, clock, batch(company, smtp_key(), 1, 101))
    assert (single.granted, single.limit, single.retry_at) == (
        False,
        "recipients_per_message",
        None,
    )
    assert await exceeded_limits(db, company) == ["recipients_per_message"]


@pytest.mark.parametrize(
    "messages,recipients,largest,why",
    [
        (0, 1, None, "messages must be between 1 and 1000"),
        (1001, 2000, None, "messages must be between 1 and 1000"),
        (3, 2, None, "recipients (the batch's total) must be at least messages"),
        (2, 4, 0, "largest_recipients must be between 1 and recipients"),
        (2, 4, 5, "largest_recipients must be between 1 and recipients"),
        (2, 10, 4, "largest_recipients times messages must be at least recipients"),
    ],
)
async def test_impossible_batches_are_refused_before_anything_is_written(
    db: Database, clock: MovableClock, messages: int, recipients: int, largest: int | None, why: str
) -> None:
    company = uuid.uuid4()
    with pytest.raises(InvalidAsk) as refused:
        await reserve(db, clock, batch(company, smtp_key(), messages, recipients, largest=largest))
    assert str(refused.value) == why
    async with db.session() as session:
        for table in (reservation, sending_account):
            assert (
                await session.scalar(
                    select(func.count()).select_from(table).where(table.c.company_id == company)
                )
                == 0
            )


async def test_commit_counts_out_of_range_change_nothing_and_say_why(
    db: Database, clock: MovableClock
) -> None:
    company = uuid.uuid4()
    five = await reserve(db, clock, batch(company, smtp_key(), 5, 10, largest=2))
    assert five.granted
    for messages, recipients, why in [
        (0, None, "messages must be between 1 and 1000"),
        (None, 0, f"recipients must be between 1 and {2**31 - 1}"),
        (None, 2**31, f"recipients must be between 1 and {2**31 - 1}"),
        (3, 2, "2 recipients cannot be the total of 3 messages"),
        (6, None, "6 messages used is more than the 5 reserved"),
        (2, 11, "11 recipients used is more than the 10 reserved"),
        (None, 4, "4 recipients cannot be the total of 5 messages"),
    ]:
        settled = await commit(db, clock, company, five, messages, recipients)
        assert (settled.ok, settled.invalid, settled.detail) == (False, True, why)
        assert await row_of(db, five) == ("reserved", 5, 10)
    exact = await commit(db, clock, company, five, 5, 10)
    assert (exact.ok, exact.invalid) == (True, False)
    assert await row_of(db, five) == ("committed", 5, 10)
    unknown = await commit(db, clock, company, Decision(True, reservation_id=uuid.uuid4()), 1, 1)
    assert (unknown.ok, unknown.found, unknown.invalid, unknown.detail) == (
        False,
        False,
        False,
        "no such reservation",
    )


async def nats_reserve(nc: Client, request: QuotaReserveRequest) -> QuotaReserveReply:
    msg = await nc.request(RPC_QUOTA_RESERVE, request.model_dump_json().encode(), timeout=20)
    return QuotaReserveReply.model_validate_json(msg.data)


async def nats_commit(nc: Client, request: QuotaSettleRequest) -> QuotaSettleReply:
    msg = await nc.request(RPC_QUOTA_COMMIT, request.model_dump_json().encode(), timeout=10)
    return QuotaSettleReply.model_validate_json(msg.data)


async def test_batches_and_partial_commits_over_nats(
    quota_service: httpx.AsyncClient, nc: Client, db: Database
) -> None:
    company, key = uuid.uuid4(), smtp_key()
    ask = QuotaReserveRequest(
        company_id=company,
        account_key=key,
        recipients=12,
        size_bytes=100,
        messages=5,
        largest_recipients=4,
        overrides={"messages_per_hour": 8},
    )
    granted = await nats_reserve(nc, ask)
    assert granted.granted and granted.reservation_id
    assert not (
        await nats_reserve(
            nc, ask.model_copy(update={"recipients": 4, "largest_recipients": 1, "messages": 4})
        )
    ).granted
    too_many = await nats_commit(
        nc,
        QuotaSettleRequest(company_id=company, reservation_id=granted.reservation_id, messages=6),
    )
    assert (too_many.ok, too_many.detail) == (
        False,
        "invalid request: 6 messages used is more than the 5 reserved",
    )
    part = await nats_commit(
        nc,
        QuotaSettleRequest(
            company_id=company, reservation_id=granted.reservation_id, messages=2, recipients=5
        ),
    )
    assert (part.ok, part.detail) == (True, "")
    async with db.session() as session:
        row = (
            await session.execute(
                select(reservation.c.state, reservation.c.messages, reservation.c.recipients).where(
                    reservation.c.reservation_id == granted.reservation_id
                )
            )
        ).one()
    assert tuple(row) == ("committed", 2, 5)
    six = ask.model_copy(update={"messages": 6, "recipients": 6, "largest_recipients": 1})
    assert (await nats_reserve(nc, six)).granted


async def test_concurrent_batches_and_single_messages_never_pass_the_limit(
    quota_service: httpx.AsyncClient, nc: Client, db: Database
) -> None:
    company, key = uuid.uuid4(), smtp_key()

    def ask(messages: int) -> QuotaReserveRequest:
        return QuotaReserveRequest(
            company_id=company,
            account_key=key,
            recipients=messages,
            size_bytes=100,
            messages=messages,
            overrides={"messages_per_day": 100},
        )

    async def sender() -> int:
        sent = 0
        for messages in (3, 1, 2, 1, 3):
            sent += messages if (await nats_reserve(nc, ask(messages))).granted else 0
        return sent

    granted = sum(await asyncio.gather(*(sender() for _ in range(30))))  # 300 messages asked for
    while (await nats_reserve(nc, ask(1))).granted:  # what is left goes one at a time
        granted += 1
    async with db.session() as session:
        counted = await session.scalar(
            select(func.sum(reservation.c.messages)).where(reservation.c.company_id == company)
        )
    assert granted == counted == 100


async def test_batches_and_partial_commits_over_http(
    quota_service: httpx.AsyncClient, clock: MovableClock
) -> None:
    admin = as_caller(quota_service, make_identity("administrator"), SECRET)
    key = smtp_key()

    def body(**fields: object) -> dict[str, object]:
        return {
            "account_key": key,
            "recipients": 5,
            "size_bytes": 100,
            "messages": 5,
            "overrides": {"messages_per_hour": 8},
            **fields,
        }

    granted = await admin.post("/v1/quotas/reservations", json=body())
    assert granted.status_code == 201, granted.text
    reservation_id = granted.json()["reservation_id"]
    too_many = await admin.post("/v1/quotas/reservations", json=body(messages=4, recipients=4))
    assert too_many.status_code == 429  # not now, but not never
    assert too_many.json()["limit"] == "messages_per_hour"
    wide = await admin.post(
        "/v1/quotas/reservations", json=body(recipients=300, largest_recipients=101)
    )
    assert wide.status_code == 422
    assert (wide.json()["limit"], wide.json()["retry_at"]) == ("recipients_per_message", None)
    for bad in (
        body(messages=0),
        body(messages=6),
        body(largest_recipients=0),
        body(messages=1001, recipients=2000),
    ):
        answer = await admin.post("/v1/quotas/reservations", json=bad)
        assert answer.status_code == 422, (bad, answer.text)

    commit_url = f"/v1/quotas/reservations/{reservation_id}/commit"
    for used_counts in (
        {"messages": 6},
        {"messages": 0},
        {"messages": 2, "recipients": 1},
        {"spent": 2},
    ):
        refused = await admin.post(commit_url, json=used_counts)
        assert refused.status_code == 422, (used_counts, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
    over = await admin.post(commit_url, json={"messages": 6})
    assert over.json()["type"].endswith("/reservation-counts-invalid")
    assert over.json()["detail"] == "6 messages used is more than the 5 reserved"
    part = await admin.post(commit_url, json={"messages": 2, "recipients": 2})
    assert part.json() == {"ok": True, "detail": ""}
    assert (await admin.post(commit_url, json={"messages": 2})).json() == {
        "ok": True,
        "detail": "already committed",
    }
    report = (await admin.get("/v1/quotas")).json()
    [hourly] = [
        item for item in report["accounts"][0]["limits"] if item["limit"] == "messages_per_hour"
    ]
    assert (hourly["used"], hourly["remaining"]) == (2, 6)
    assert (
        await admin.post("/v1/quotas/reservations", json=body(messages=6, recipients=6))
    ).status_code == 201


async def test_a_passing_check_says_how_much_room_is_left(
    db: Database, clock: MovableClock
) -> None:
    company, key = uuid.uuid4(), smtp_key()
    limits = {"messages_per_hour": 10, "recipients_per_day": 50}
    assert (await reserve(db, clock, batch(company, key, 4, 12, **limits))).granted
    async with db.session() as session:
        checked = await reservations.reserve(
            session, batch(company, key, 1, 3, **limits), clock, dry_run=True
        )
    # after this one: 10 - 4 - 1 messages this hour, 50 - 12 - 3 recipients today
    assert checked.granted and (checked.room_messages, checked.room_recipients) == (5, 35)
    async with db.session() as session:
        unlimited = await reservations.reserve(
            session, batch(company, smtp_key(), 1), clock, dry_run=True
        )
    assert unlimited.granted and (unlimited.room_messages, unlimited.room_recipients) == (
        None,
        None,
    )


async def test_a_reservation_id_chosen_by_the_sender_is_granted_once(
    db: Database, clock: MovableClock
) -> None:
    company, key, chosen = uuid.uuid4(), smtp_key(), uuid.uuid4()
    ask = batch(company, key, 3, messages_per_hour=4)
    ask = ReserveAsk(
        ask.company_id,
        ask.account_key,
        ask.provider,
        ask.recipients,
        ask.size_bytes,
        account_settings=ask.account_settings,
        messages=3,
        reservation_id=chosen,
    )
    first, again = (
        await reserve(db, clock, ask),
        await reserve(db, clock, ask),
    )  # e.g. a retried request
    assert first.granted and first.reservation_id == chosen
    assert again.granted and again.reservation_id == chosen
    assert await row_of(db, first) == ("reserved", 3, 3)
    # counted once: one more message fits, a second does not
    assert (await reserve(db, clock, batch(company, key, 1, messages_per_hour=4))).granted
    assert not (await reserve(db, clock, batch(company, key, 1, messages_per_hour=4))).granted
