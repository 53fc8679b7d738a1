"""Every window kind on real PostgreSQL, with the clock moved by hand."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from leadline_kit.db import Database
from leadline_proto.events import QuotaExceededV1, parse_event
from leadline_quota.accounts.service import set_operator_overrides
from leadline_quota.clock import MovableClock
from leadline_quota.limits import ROLLING_WINDOWS
from leadline_quota.models import outbox
from leadline_quota.models import reservation as reservation_table
from leadline_quota.reservations import repository
from leadline_quota.reservations import service as reservations
from leadline_quota.reservations.service import Decision, InvalidAsk, ReserveAsk


def smtp_key() -> str:
    return f"smtp:{uuid.uuid4()}"


async def ask(
    db: Database,
    clock: MovableClock,
    request: ReserveAsk,
    *,
    dry_run: bool = False,
    commit: bool = False,
) -> Decision:
    async with db.session() as session:
        decision = await reservations.reserve(session, request, clock, dry_run=dry_run)
        if commit and decision.reservation_id:
            assert (
                await reservations.commit(
                    session, request.company_id, decision.reservation_id, clock
                )
            ).ok
        return decision


def request(company: uuid.UUID, key: str, recipients: int = 1, **settings: int) -> ReserveAsk:
    month_start_day = settings.pop("month_start_day", None)
    return ReserveAsk(
        company,
        key,
        "custom",
        recipients,
        1000,
        ttl_seconds=86400,
        account_settings=settings,
        month_start_day=month_start_day,
    )


@pytest.mark.parametrize("window", list(ROLLING_WINDOWS))
async def test_rolling_window_frees_each_use_one_length_after_it(
    db: Database, clock: MovableClock, window: str
) -> None:
    company, key = uuid.uuid4(), smtp_key()
    length = ROLLING_WINDOWS[window]
    limit = {f"messages_per_{window}": 3}
    first_at = clock.now
    assert (await ask(db, clock, request(company, key, **limit))).granted
    clock.advance(seconds=length.total_seconds() / 4)
    assert (await ask(db, clock, request(company, key, **limit))).granted
    assert (await ask(db, clock, request(company, key, **limit))).granted

    refused = await ask(db, clock, request(company, key, **limit))
    assert not refused.granted
    assert refused.limit == f"messages_per_{window}"
    assert refused.retry_at == first_at + length

    clock.set(first_at + length - timedelta(microseconds=1))
    assert not (await ask(db, clock, request(company, key, **limit))).granted
    clock.set(first_at + length)
    assert (await ask(db, clock, request(company, key, **limit))).granted
    assert not (await ask(db, clock, request(company, key, **limit))).granted


async def test_recipients_window_counts_recipients_and_names_the_use_that_frees_enough(
    db: Database, clock: MovableClock
) -> None:
    company, key = uuid.uuid4(), smtp_key()
    limit = {"recipients_per_day": 10}
    start = clock.now
    assert (
        await ask(db, clock, request(company, key, 2, **limit))
    ).granted  # frees at start + 1 day
    clock.advance(hours=1)
    assert (
        await ask(db, clock, request(company, key, 5, **limit))
    ).granted  # frees at start + 25 h
    clock.advance(hours=1)
    assert (await ask(db, clock, request(company, key, 3, **limit))).granted  # 10 of 10 used
    # 6 more need 6 freed: the first (2) is not enough, the first two (7) are
    refused = await ask(db, clock, request(company, key, 6, **limit))
    assert (refused.granted, refused.limit) == (False, "recipients_per_day")
    assert refused.retry_at == start + timedelta(days=1, hours=1)
    # the rolling-day edge: exactly one day after a use, it no longer counts
    clock.set(start + timedelta(days=1))
    assert (await ask(db, clock, request(company, key, 2, **limit))).granted
    assert not (await ask(db, clock, request(company, key, 1, **limit))).granted


async def test_month_start_day_31_falls_on_the_last_day_of_short_months(
    db: Database, clock: MovableClock
) -> None:
    company, key = uuid.uuid4(), smtp_key()
    limit = {"messages_per_month": 2, "month_start_day": 31}
    clock.set(datetime(2026, 1, 31, 9, 0, tzinfo=UTC))
    assert (await ask(db, clock, request(company, key, **limit), commit=True)).granted
    clock.set(datetime(2026, 2, 20, 9, 0, tzinfo=UTC))
    assert (await ask(db, clock, request(company, key, **limit), commit=True)).granted
    refused = await ask(db, clock, request(company, key, **limit), commit=True)
    assert refused.limit == "messages_per_month"
    assert refused.retry_at == datetime(2026, 2, 28, tzinfo=UTC)  # February has no 31st

    clock.set(datetime(2026, 2, 27, 23, 59, 59, tzinfo=UTC))
    assert not (await ask(db, clock, request(company, key, **limit), commit=True)).granted
    clock.set(datetime(2026, 2, 28, tzinfo=UTC))
    assert (await ask(db, clock, request(company, key, **limit), commit=True)).granted
    assert (await ask(db, clock, request(company, key, **limit), commit=True)).granted
    refused = await ask(db, clock, request(company, key, **limit), commit=True)
    assert refused.retry_at == datetime(2026, 3, 31, tzinfo=UTC)
    clock.set(datetime(2026, 3, 31, tzinfo=UTC))
    assert (await ask(db, clock, request(company, key, **limit), commit=True)).granted


async def test_month_start_day_across_the_year_boundary(db: Database, clock: MovableClock) -> None:
    company, key = uuid.uuid4(), smtp_key()
    limit = {"messages_per_month": 1, "month_start_day": 15}
    clock.set(datetime(2026, 12, 20, tzinfo=UTC))
    assert (await ask(db, clock, request(company, key, **limit), commit=True)).granted
    clock.set(datetime(2027, 1, 14, 23, 0, tzinfo=UTC))
    refused = await ask(db, clock, request(company, key, **limit), commit=True)
    assert refused.retry_at == datetime(2027, 1, 15, tzinfo=UTC)
    clock.set(datetime(2027, 1, 15, tzinfo=UTC))
    assert (await ask(db, clock, request(company, key, **limit), commit=True)).granted


async def test_expiry_release_and_commit(db: Database, clock: MovableClock) -> None:
    company, key = uuid.uuid4(), smtp_key()
    limit = {"messages_per_day": 2}
    short = ReserveAsk(company, key, "custom", 1, 10, ttl_seconds=60, account_settings=limit)
    expiring = await ask(db, clock, short)
    kept = await ask(db, clock, request(company, key, **limit))
    assert expiring.granted and kept.granted
    refused = await ask(db, clock, request(company, key, **limit))
    # the uncommitted reservation gives its capacity back when it expires, before the day is over
    assert refused.retry_at == expiring.expires_at
    clock.advance(seconds=60)
    again = await ask(db, clock, request(company, key, **limit))
    assert again.granted

    async with db.session() as session:
        assert again.reservation_id and kept.reservation_id
        assert (await reservations.release(session, company, again.reservation_id, clock)).ok
        assert (await reservations.commit(session, company, kept.reservation_id, clock)).ok
        # settling twice is harmless; the opposite settlement is refused
        assert (await reservations.commit(session, company, kept.reservation_id, clock)).ok
        assert not (await reservations.release(session, company, kept.reservation_id, clock)).ok
        # another company cannot settle it
        assert not (
            await reservations.commit(session, uuid.uuid4(), kept.reservation_id, clock)
        ).found
    assert (await ask(db, clock, request(company, key, **limit))).granted  # the released one's room
    assert not (await ask(db, clock, request(company, key, **limit))).granted
    # a committed reservation stays counted after its ttl
    clock.advance(hours=2)
    assert not (await ask(db, clock, request(company, key, **limit))).granted


async def test_static_limits_refuse_without_retry_and_unknown_provider_gets_custom(
    db: Database, clock: MovableClock
) -> None:
    company = uuid.uuid4()
    yahoo = ReserveAsk(company, smtp_key(), "Yahoo", 101, 1000)
    refused = await ask(db, clock, yahoo)
    assert (refused.granted, refused.limit, refused.retry_at) == (
        False,
        "recipients_per_message",
        None,
    )
    too_big = ReserveAsk(company, smtp_key(), "roadrunner", 1, 5 * 1048576 + 1)
    refused = await ask(db, clock, too_big)
    assert (refused.limit, refused.retry_at) == ("message_size_bytes", None)
    # a window that one message alone overflows can never pass either
    wide = ReserveAsk(company, smtp_key(), "earthlink", 1001, 10)
    assert (await ask(db, clock, wide)).retry_at is None

    unknown = ReserveAsk(company, f"mailbox:{uuid.uuid4()}", "no-such-provider", 100, 10485760)
    assert (await ask(db, clock, unknown)).granted
    refused = await ask(
        db, clock, ReserveAsk(company, f"mailbox:{uuid.uuid4()}", "no-such-provider", 101, 10)
    )
    assert refused.limit == "recipients_per_message"


async def test_refusal_enqueues_quota_exceeded_and_check_reserves_nothing(
    db: Database, clock: MovableClock
) -> None:
    company, key = uuid.uuid4(), smtp_key()
    limit = {"messages_per_hour": 1}
    assert (await ask(db, clock, request(company, key, **limit), dry_run=True)).granted
    assert (await ask(db, clock, request(company, key, **limit), dry_run=True)).granted
    assert (await ask(db, clock, request(company, key, **limit))).granted
    checked = await ask(db, clock, request(company, key, **limit), dry_run=True)
    assert (checked.granted, checked.limit) == (False, "messages_per_hour")
    async with db.session() as session:
        assert (
            await session.scalar(select(func.count()).select_from(outbox)) == 0
        )  # a check is silent
    refused = await ask(db, clock, request(company, key, **limit))
    async with db.session() as session:
        bodies = (await session.execute(select(outbox.c.body))).scalars().all()
    events = [parse_event(body) for body in bodies]
    assert [(e.type, e.company_id) for e in events] == [("quota.exceeded", company)]
    assert isinstance(events[0], QuotaExceededV1)
    payload = events[0].payload
    assert (payload.account_key, payload.limit, payload.retry_at) == (
        key,
        "messages_per_hour",
        refused.retry_at,
    )


async def test_operator_overrides_win_over_account_settings_over_preset(
    db: Database, clock: MovableClock
) -> None:
    company, key = uuid.uuid4(), smtp_key()
    gmail = ReserveAsk(company, key, "gmail", 1, 10, account_settings={"messages_per_day": 3})
    for _ in range(3):
        assert (await ask(db, clock, gmail)).granted  # the account's 3/day, not gmail's 100
    assert not (await ask(db, clock, gmail)).granted
    async with db.session() as session:
        report = await set_operator_overrides(
            session, company, key, {"messages_per_day": 4}, None, None, clock()
        )
    day = next(r for r in report.limits if r.limit == "messages_per_day")
    assert (day.maximum, day.used, day.remaining) == (4, 3, 1)
    assert (await ask(db, clock, gmail)).granted
    assert not (await ask(db, clock, gmail)).granted
    async with db.session() as session:
        await set_operator_overrides(
            session, company, key, {"messages_per_day": None}, None, None, clock()
        )
    assert (await ask(db, clock, gmail)).granted  # a null override lifts the limit


@pytest.mark.parametrize(
    "bad",
    [
        ReserveAsk(uuid.uuid4(), "smtp:not-a-uuid", "custom", 1, 1),
        ReserveAsk(uuid.uuid4(), "imap:6f1c2b9e-3f4e-4c55-9d0e-0a9f7d6b1c2a", "custom", 1, 1),
        ReserveAsk(uuid.uuid4(), f"smtp:{uuid.uuid4()}", "custom", 0, 1),
        ReserveAsk(uuid.uuid4(), f"smtp:{uuid.uuid4()}", "custom", 1, -5),
        ReserveAsk(uuid.uuid4(), f"smtp:{uuid.uuid4()}", "custom", 1, 1, ttl_seconds=0),
        ReserveAsk(
            uuid.uuid4(),
            f"smtp:{uuid.uuid4()}",
            "custom",
            1,
            1,
            account_settings={"max_per_month": 5},
        ),
        ReserveAsk(uuid.uuid4(), f"smtp:{uuid.uuid4()}", "custom", 1, 1, month_start_day=32),
        ReserveAsk(uuid.uuid4(), f"smtp:{uuid.uuid4()}", "custom", 2**31, 1),
        ReserveAsk(
            uuid.uuid4(),
            f"smtp:{uuid.uuid4()}",
            "custom",
            1,
            1,
            account_settings={"messages_per_day": 2**40},
        ),
    ],
)
async def test_malformed_asks_are_refused_before_anything_is_written(
    db: Database, clock: MovableClock, bad: ReserveAsk
) -> None:
    with pytest.raises(InvalidAsk):
        await ask(db, clock, bad)


async def test_late_commit_records_usage_and_pruning_keeps_what_still_counts(
    db: Database, clock: MovableClock
) -> None:
    company, key = uuid.uuid4(), smtp_key()
    limit = {"messages_per_day": 3}
    late = await ask(
        db, clock, ReserveAsk(company, key, "custom", 1, 10, ttl_seconds=5, account_settings=limit)
    )
    released = await ask(db, clock, request(company, key, **limit))
    kept = await ask(db, clock, request(company, key, **limit), commit=True)
    clock.advance(seconds=10)
    async with db.session() as session:
        assert late.reservation_id and released.reservation_id
        settled = await reservations.commit(session, company, late.reservation_id, clock)
        assert settled.ok and "expired" in settled.detail  # the message went out: its usage counts
        assert (await reservations.release(session, company, released.reservation_id, clock)).ok
        assert (
            await repository.prune(session, clock()) == 0
        )  # a release is kept a while (a reserve may follow)
        later = clock() + repository.KEEP_RELEASED + timedelta(seconds=1)
        assert await repository.prune(session, later) == 1  # then only the released one goes
    assert (await ask(db, clock, request(company, key, **limit))).granted
    assert not (await ask(db, clock, request(company, key, **limit))).granted
    clock.advance(days=33)
    async with db.session() as session:
        assert await repository.prune(session, clock()) == 3
        left = await session.scalar(
            select(func.count())
            .select_from(reservation_table)
            .where(reservation_table.c.company_id == company)
        )
    assert left == 0 and kept.granted
