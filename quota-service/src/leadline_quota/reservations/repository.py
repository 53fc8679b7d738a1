"""Every query of the quota reservations (``service.py`` decides, this module reads and writes).

The reserve path is hot: its two statements (the account lock, the conditional insert of a grant)
are SQLAlchemy Core built once per shape and cached, since building a statement costs more than
running it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    Text,
    Uuid,
    and_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningInsert

from leadline_quota.limits import ROLLING_WINDOWS, AccountLimits, WindowedLimit, window_bounds
from leadline_quota.models import reservation, sending_account
from leadline_quota.states import ReservationState, move

# --- usage -------------------------------------------------------------------------------


def _live(now: datetime | ColumnElement[Any]) -> ColumnElement[bool]:
    return or_(
        reservation.c.state == ReservationState.COMMITTED,
        and_(reservation.c.state == ReservationState.RESERVED, reservation.c.expires_at > now),
    )


def _of_account(company_id: uuid.UUID, account_key: str) -> ColumnElement[bool]:
    return and_(reservation.c.company_id == company_id, reservation.c.account_key == account_key)


def _in_window(start: datetime, end: datetime | None) -> ColumnElement[bool]:
    after = reservation.c.reserved_at > start
    return after if end is None else and_(after, reservation.c.reserved_at < end)


def _free_at(window: str, end: datetime | None) -> ColumnElement[Any]:
    """When a counted reservation stops counting in ``window`` (PostgreSQL's LEAST skips NULLs)."""
    leaves = reservation.c.reserved_at + ROLLING_WINDOWS[window] if end is None else literal(end)
    return func.least(
        leaves, case((reservation.c.state == ReservationState.RESERVED, reservation.c.expires_at))
    )


def _weight(measure: str) -> ColumnElement[Any]:
    return reservation.c.messages if measure == "messages" else reservation.c.recipients


@dataclass(frozen=True)
class LimitUsage:
    limit: WindowedLimit
    used: int
    resets_at: datetime | None  # when the usage next goes down (None: nothing counted)


async def window_usage(
    session: AsyncSession,
    company_id: uuid.UUID,
    account_key: str,
    limits: AccountLimits,
    now: datetime,
    *,
    with_resets: bool = False,
) -> list[LimitUsage]:
    """Usage of every windowed limit of the account, in one aggregate query."""
    windowed = limits.windowed()
    if not windowed:
        return []
    columns: list[ColumnElement[Any]] = []
    oldest = now
    for limit in windowed:
        start, end = window_bounds(limit.window, now, limits.month_start_day)
        oldest = min(oldest, start)
        inside = _in_window(start, end)
        columns.append(func.coalesce(func.sum(_weight(limit.measure)).filter(inside), 0))
        if with_resets:
            columns.append(func.min(_free_at(limit.window, end)).filter(inside))
    row = (
        await session.execute(
            select(*columns).where(
                _of_account(company_id, account_key), _live(now), reservation.c.reserved_at > oldest
            )
        )
    ).one()
    step = 2 if with_resets else 1
    return [
        LimitUsage(limit, int(row[i * step]), row[i * step + 1] if with_resets else None)
        for i, limit in enumerate(windowed)
    ]


async def earliest_capacity(
    session: AsyncSession,
    company_id: uuid.UUID,
    account_key: str,
    limits: AccountLimits,
    limit: WindowedLimit,
    excess: int,
    now: datetime,
) -> datetime:
    """The first moment at least ``excess`` of the limit's counted usage has been freed."""
    start, end = window_bounds(limit.window, now, limits.month_start_day)
    free_at = _free_at(limit.window, end)
    freeing = (
        select(
            free_at.label("free_at"),
            func.sum(_weight(limit.measure)).over(order_by=free_at).label("freed"),
        )
        .where(_of_account(company_id, account_key), _live(now), _in_window(start, end))
        .subquery()
    )
    found = await session.scalar(
        select(freeing.c.free_at)
        .where(freeing.c.freed >= excess)
        .order_by(freeing.c.free_at)
        .limit(1)
    )
    # nothing counted frees enough for a batch bigger than the limit (or if the usage changed under
    # us): the window end is safe
    return found or (end if end is not None else now + ROLLING_WINDOWS[limit.window])


# --- reserving ---------------------------------------------------------------------------


# the stored limit layers over the sender's settings: the operator's, then the tenant's
LAYERS_ABOVE_SETTINGS = (
    sending_account.c.operator_overrides,
    sending_account.c.operator_month_start_day,
    sending_account.c.tenant_overrides,
)


def _lock_statement() -> ReturningInsert[Any]:
    statement = insert(sending_account).values(
        company_id=bindparam("company_id", type_=Uuid),
        account_key=bindparam("account_key", type_=Text),
        provider=bindparam("provider", type_=Text),
        account_settings=bindparam("account_settings", type_=JSONB),
        settings_month_start_day=bindparam("month_start_day", type_=Integer),
        last_reserved_at=bindparam("now", type_=DateTime(timezone=True)),
    )
    return statement.on_conflict_do_update(
        index_elements=[sending_account.c.company_id, sending_account.c.account_key],
        set_={
            "provider": statement.excluded.provider,
            "account_settings": statement.excluded.account_settings,
            "settings_month_start_day": statement.excluded.settings_month_start_day,
            "last_reserved_at": statement.excluded.last_reserved_at,
        },
    ).returning(*LAYERS_ABOVE_SETTINGS)


# built once: the reserve path is hot and building statements costs more than running them
LOCK_ACCOUNT = _lock_statement()


async def lock_account(
    session: AsyncSession,
    company_id: uuid.UUID,
    account_key: str,
    provider: str,
    account_settings: dict[str, int],
    month_start_day: int | None,
    now: datetime,
) -> dict[str, Any]:
    """Create or refresh the account row and hold its lock until the transaction ends; its stored
    layers."""
    row = (
        await session.execute(
            LOCK_ACCOUNT,
            {
                "company_id": company_id,
                "account_key": account_key,
                "provider": provider,
                "account_settings": account_settings,
                "month_start_day": month_start_day,
                "now": now,
            },
        )
    ).one()
    return dict(row._mapping)


async def stored_layers(
    session: AsyncSession, company_id: uuid.UUID, account_key: str
) -> dict[str, Any]:
    row = (
        await session.execute(
            select(*LAYERS_ABOVE_SETTINGS).where(
                sending_account.c.company_id == company_id,
                sending_account.c.account_key == account_key,
            )
        )
    ).first()
    return (
        dict(row._mapping)
        if row
        else {"operator_overrides": {}, "operator_month_start_day": None, "tenant_overrides": {}}
    )


@cache
def _grant_statement(shape: tuple[tuple[str, str], ...]) -> ReturningInsert[Any]:
    """INSERT the reservation only if every windowed limit of ``shape`` still has room.

    One statement: the usage aggregate and the insert, for the common case (a grant).  It must
    run after the account lock is held, so that its snapshot sees every earlier grant.
    """
    timestamp = DateTime(timezone=True)
    now = bindparam("now", type_=timestamp)
    sums = []
    for i, (measure, window) in enumerate(shape):
        inside = reservation.c.reserved_at > bindparam(f"start_{i}", type_=timestamp)
        if window == "month":
            inside = and_(
                inside, reservation.c.reserved_at < bindparam(f"end_{i}", type_=timestamp)
            )
        sums.append(func.coalesce(func.sum(_weight(measure)).filter(inside), 0).label(f"used_{i}"))
    values = select(
        bindparam("reservation_id", type_=Uuid),
        bindparam("company_id", type_=Uuid),
        bindparam("account_key", type_=Text),
        bindparam("messages", type_=Integer),
        bindparam("recipients", type_=Integer),
        bindparam("size_bytes", type_=BigInteger),
        literal(ReservationState.RESERVED.value, type_=Text),
        now,
        bindparam("expires_at", type_=timestamp),
    )
    if shape:
        usage = (
            select(*sums)
            .where(
                reservation.c.company_id == bindparam("company_id", type_=Uuid),
                reservation.c.account_key == bindparam("account_key", type_=Text),
                _live(now),
                reservation.c.reserved_at > bindparam("oldest", type_=timestamp),
            )
            .subquery("usage")
        )
        values = values.select_from(usage).where(
            *(
                usage.c[f"used_{i}"] <= bindparam(f"room_{i}", type_=Integer)
                for i in range(len(shape))
            )
        )
    columns = [
        "reservation_id",
        "company_id",
        "account_key",
        "messages",
        "recipients",
        "size_bytes",
        "state",
        "reserved_at",
        "expires_at",
    ]
    return reservation.insert().from_select(columns, values).returning(reservation.c.reservation_id)


@dataclass(frozen=True)
class Grant:
    """A reservation to record if every window still has room (``windows``: per windowed limit its
    start, end and the usage it may hold at most before this grant)."""

    reservation_id: uuid.UUID
    company_id: uuid.UUID
    account_key: str
    messages: int
    recipients: int
    size_bytes: int
    now: datetime
    expires_at: datetime
    windows: list[tuple[WindowedLimit, datetime, datetime | None, int]]


async def insert_if_room(session: AsyncSession, grant: Grant) -> bool:
    """Record the reservation (one message or a whole batch) if every window has room; whether it
    was."""
    params: dict[str, Any] = {
        "reservation_id": grant.reservation_id,
        "company_id": grant.company_id,
        "account_key": grant.account_key,
        "messages": grant.messages,
        "recipients": grant.recipients,
        "size_bytes": grant.size_bytes,
        "now": grant.now,
        "expires_at": grant.expires_at,
        "oldest": grant.now,
    }
    for i, (_, start, end, room) in enumerate(grant.windows):
        params[f"start_{i}"] = start
        params["oldest"] = min(params["oldest"], start)
        if end is not None:
            params[f"end_{i}"] = end
        params[f"room_{i}"] = room
    statement = _grant_statement(
        tuple((limit.measure, limit.window) for limit, _, _, _ in grant.windows)
    )
    return (await session.execute(statement, params)).first() is not None


async def reservation_row(
    session: AsyncSession, company_id: uuid.UUID, reservation_id: uuid.UUID
) -> Any:
    """The reservation's state, expiry and counts (None: no such reservation of the company)."""
    return (
        await session.execute(
            select(
                reservation.c.state,
                reservation.c.expires_at,
                reservation.c.messages,
                reservation.c.recipients,
            ).where(
                reservation.c.reservation_id == reservation_id,
                reservation.c.company_id == company_id,
            )
        )
    ).first()


async def commit_reserved(
    session: AsyncSession,
    company_id: uuid.UUID,
    reservation_id: uuid.UUID,
    now: datetime,
    messages: int | None,
    recipients: int | None,
) -> datetime | None:
    """Commit the reservation if it is still reserved and the used counts fit in it; its expiry if
    it was."""
    used: dict[str, Any] = {}
    fits: list[ColumnElement[bool]] = []
    if messages is not None:
        used["messages"] = messages
        fits += [reservation.c.messages >= messages]
    if recipients is not None:
        used["recipients"] = recipients
        fits += [reservation.c.recipients >= recipients]
        if messages is None:
            fits += [reservation.c.messages <= recipients]
    row = (
        await session.execute(
            update(reservation)
            .where(
                reservation.c.reservation_id == reservation_id,
                reservation.c.company_id == company_id,
                reservation.c.state == ReservationState.RESERVED,
                *fits,
            )
            .values(
                state=move(ReservationState.RESERVED, ReservationState.COMMITTED),
                settled_at=now,
                **used,
            )
            .returning(reservation.c.expires_at)
        )
    ).first()
    return None if row is None else row.expires_at


async def release_reserved(
    session: AsyncSession, company_id: uuid.UUID, reservation_id: uuid.UUID, now: datetime
) -> bool:
    """Release the reservation if it is still reserved; whether it was."""
    released = (
        await session.execute(
            update(reservation)
            .where(
                reservation.c.reservation_id == reservation_id,
                reservation.c.company_id == company_id,
                reservation.c.state == ReservationState.RESERVED,
            )
            .values(
                state=move(ReservationState.RESERVED, ReservationState.RELEASED), settled_at=now
            )
            .returning(reservation.c.reservation_id)
        )
    ).first()
    return released is not None


async def record_release(
    session: AsyncSession, company_id: uuid.UUID, reservation_id: uuid.UUID, now: datetime
) -> bool:
    """Record an unknown id as released (its reserve may still come); False when the id exists
    already."""
    recorded = (
        await session.execute(
            insert(reservation)
            .values(
                reservation_id=reservation_id,
                company_id=company_id,
                account_key="",
                messages=1,
                recipients=0,
                size_bytes=0,
                state=ReservationState.RELEASED,
                reserved_at=now,
                expires_at=now,
                settled_at=now,
            )
            .on_conflict_do_nothing(index_elements=[reservation.c.reservation_id])
            .returning(reservation.c.reservation_id)
        )
    ).first()
    return recorded is not None


async def state(
    session: AsyncSession, company_id: uuid.UUID, reservation_id: uuid.UUID
) -> str | None:
    return await session.scalar(
        select(reservation.c.state).where(
            reservation.c.reservation_id == reservation_id, reservation.c.company_id == company_id
        )
    )


# --- housekeeping ------------------------------------------------------------------------

# the longest window is a month (at most 31 days); a reservation older than this counts nowhere
KEEP_RESERVATIONS = timedelta(days=32)
# an expired, unsettled reservation is kept a while so that a late commit still records its usage
KEEP_EXPIRED = timedelta(hours=1)
# a released one (or the record of a release that came before its reserve) a while, so that a
# reserve still on its way is refused
KEEP_RELEASED = timedelta(minutes=10)


async def prune(session: AsyncSession, now: datetime) -> int:
    """Delete reservations that no longer count in any window."""
    result = await session.execute(
        # unscoped: housekeeping of every company: reservations past every window
        reservation.delete().where(
            or_(
                reservation.c.reserved_at < now - KEEP_RESERVATIONS,
                and_(
                    reservation.c.state == ReservationState.RELEASED,
                    reservation.c.settled_at < now - KEEP_RELEASED,
                ),
                and_(
                    reservation.c.state == ReservationState.RESERVED,
                    reservation.c.expires_at < now - KEEP_EXPIRED,
                ),
            )
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
