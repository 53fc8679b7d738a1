"""Quota reservations: reserve, then commit or release, or let expire (R14); the decisions (queries:
``repository``).

A sender asks to *reserve* one message (account, recipients, size), or a
batch of messages of one account: ``messages`` of them, ``recipients`` in all,
the largest ``size_bytes`` and ``largest_recipients``.  A batch is granted
whole or not at all, in the same statement as one message, its demand being
its messages (or its total recipients) on every windowed limit.  The
reservation is decided while holding the sending account's row lock (taken by
``INSERT ... ON CONFLICT DO UPDATE`` on ``sending_account``), so the
reservations of one account are decided one at a time whichever process or
connection asks: concurrent sends never push an account past a limit, and no
isolation level beyond READ COMMITTED is relied upon (R26).  A grant is then
one statement — the usage aggregate and a conditional insert — which, run
after the lock statement, gets a snapshot that holds every earlier grant.

States of a reservation::

    reserved --commit--> committed      (counts until it leaves every window; a commit may
                                         name the part of a batch that was used, the rest is given back)
    reserved --release-> released       (counts for nothing)
    reserved --expires_at passes--> counts for nothing (a late commit still records the usage)

A refusal names the limit that would be passed and ``retry_at``, the earliest
moment enough of the counted usage has left that limit's window (a rolling
window frees each use ``length`` after it was granted; the month window frees
everything at the next month start; a reservation frees at its expiry if that
comes first).  ``retry_at`` is ``None`` when the message can never pass (more
recipients or bytes than the account allows for one message; for a batch,
when its largest message can never pass: a batch too big as a whole is not
"never").  Each refused reservation of one message enqueues ``quota.exceeded``
in the same transaction; a refused batch does not, as its sender then reserves
the messages one at a time and those refusals say it.
"""  # noqa: E501

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.outbox import enqueue
from leadline_proto.events import QuotaExceededPayload, QuotaExceededV1
from leadline_quota.clock import Clock
from leadline_quota.limits import (
    MAX_LIMIT,
    AccountLimits,
    WindowedLimit,
    invalid_limit_settings,
    resolve_limits,
    window_bounds,
)
from leadline_quota.models import outbox
from leadline_quota.reservations import repository
from leadline_quota.states import ReservationState

ACCOUNT_KEY = re.compile(r"^(mailbox|smtp):([0-9a-fA-F-]{32,36})$")
MAX_TTL_SECONDS = 24 * 3600
MAX_BATCH_MESSAGES = 1000


class InvalidAsk(ValueError):
    """The request cannot be decided (malformed account key, negative size, unknown limit, ...)."""


def canonical_account_key(account_key: str) -> str:
    """``mailbox:<uuid>`` or ``smtp:<uuid>`` with the uuid in canonical form."""
    match = ACCOUNT_KEY.match(account_key.strip())
    if not match:
        raise InvalidAsk("account_key must be 'mailbox:<uuid>' or 'smtp:<uuid>'")
    try:
        return f"{match.group(1)}:{uuid.UUID(match.group(2))}"
    except ValueError as exc:
        raise InvalidAsk("account_key must be 'mailbox:<uuid>' or 'smtp:<uuid>'") from exc


@dataclass(frozen=True)
class ReserveAsk:
    company_id: uuid.UUID
    account_key: str
    provider: str
    recipients: int
    size_bytes: int
    ttl_seconds: int = 600
    account_settings: dict[str, int] = field(default_factory=dict)
    month_start_day: int | None = None
    # a batch: ``recipients`` is the total of its messages, ``size_bytes`` the largest message's
    # size
    messages: int = 1
    largest_recipients: int | None = None  # None: ``recipients`` (one message)
    reservation_id: uuid.UUID | None = None  # the sender's choice; None: one is made

    @property
    def largest(self) -> int:
        """Recipients of the batch's message with the most (of the one message)."""
        return self.recipients if self.largest_recipients is None else self.largest_recipients

    def validated(self) -> ReserveAsk:
        if not 1 <= self.recipients <= MAX_LIMIT:
            raise InvalidAsk(f"recipients must be between 1 and {MAX_LIMIT}")
        if not 1 <= self.messages <= MAX_BATCH_MESSAGES:
            raise InvalidAsk(f"messages must be between 1 and {MAX_BATCH_MESSAGES}")
        if self.messages > self.recipients:
            raise InvalidAsk("recipients (the batch's total) must be at least messages")
        if not 1 <= self.largest <= self.recipients:
            raise InvalidAsk("largest_recipients must be between 1 and recipients")
        if self.largest * self.messages < self.recipients:
            # the largest message has at least the average: less would hide it from
            # recipients_per_message
            raise InvalidAsk("largest_recipients times messages must be at least recipients")
        if not 0 <= self.size_bytes < 2**63:
            raise InvalidAsk("size_bytes must be between 0 and 2**63 - 1")
        if not 1 <= self.ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidAsk(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}")
        problem = invalid_limit_settings(dict(self.account_settings), self.month_start_day)
        if problem:
            raise InvalidAsk(problem)
        return ReserveAsk(
            self.company_id,
            canonical_account_key(self.account_key),
            self.provider[:100] or "custom",
            self.recipients,
            self.size_bytes,
            self.ttl_seconds,
            dict(self.account_settings),
            self.month_start_day,
            self.messages,
            self.largest,
            self.reservation_id,
        )


@dataclass(frozen=True)
class Decision:
    granted: bool
    reservation_id: uuid.UUID | None = None
    expires_at: datetime | None = None
    limit: str | None = None
    retry_at: datetime | None = None
    detail: str = ""
    room_messages: int | None = None  # a passing check: what is left after the ask, per measure
    room_recipients: int | None = None


# --- deciding ----------------------------------------------------------------------------


def _static_refusal(limits: AccountLimits, ask: ReserveAsk) -> Decision | None:
    """A refusal when one message (of a batch, the largest) can never pass, whatever the usage."""
    static = limits.static()
    never = (
        "this message can never pass"
        if ask.messages == 1
        else "the batch's largest message can never pass"
    )
    for name, asked in (
        ("recipients_per_message", ask.largest),
        ("recipients_per_connection", ask.largest),
        ("message_size_bytes", ask.size_bytes),
    ):
        if name in static and asked > static[name]:
            return Decision(
                False, limit=name, detail=f"{asked} exceeds {name} = {static[name]}; {never}"
            )
    for limit in limits.windowed():
        demand = limit.demand(1, ask.largest)
        if demand > limit.maximum:
            return Decision(
                False,
                limit=limit.name,
                detail=f"{demand} exceeds {limit.name} = {limit.maximum}; {never}",
            )
    return None


async def _grant_if_room(
    session: AsyncSession, ask: ReserveAsk, limits: AccountLimits, now: datetime
) -> Decision | None:
    """Record the reservation (one message or a whole batch) if every window has room; ``None`` when
    one has not."""
    decision = Decision(
        True,
        reservation_id=ask.reservation_id or uuid.uuid4(),
        expires_at=now + timedelta(seconds=ask.ttl_seconds),
    )
    assert decision.reservation_id is not None and decision.expires_at is not None
    windows = [
        (limit, *window_bounds(limit.window, now, limits.month_start_day), room)
        for limit in limits.windowed()
        for room in [limit.maximum - limit.demand(ask.messages, ask.recipients)]
    ]
    grant = repository.Grant(
        decision.reservation_id,
        ask.company_id,
        ask.account_key,
        ask.messages,
        ask.recipients,
        ask.size_bytes,
        now,
        decision.expires_at,
        windows,
    )
    return decision if await repository.insert_if_room(session, grant) else None


async def _earlier_grant(session: AsyncSession, ask: ReserveAsk) -> Decision | None:
    """The reservation the sender's id already names (a repeated ask: answered again, never
    doubled)."""
    assert ask.reservation_id is not None
    row = await repository.reservation_row(session, ask.company_id, ask.reservation_id)
    if row is None:
        return None
    if row.state == ReservationState.RELEASED:
        return Decision(
            False, reservation_id=ask.reservation_id, detail="this reservation was released"
        )
    return Decision(
        True, reservation_id=ask.reservation_id, expires_at=row.expires_at, detail="already granted"
    )


async def reserve(
    session: AsyncSession, ask: ReserveAsk, clock: Clock, *, dry_run: bool = False
) -> Decision:
    """Grant or refuse one message or a batch; ``dry_run`` answers the same without reserving or
    locking."""
    ask = ask.validated()
    if dry_run:
        stored = await repository.stored_layers(session, ask.company_id, ask.account_key)
    else:
        stored = await repository.lock_account(
            session,
            ask.company_id,
            ask.account_key,
            ask.provider,
            ask.account_settings,
            ask.month_start_day,
            clock(),
        )
    # read the clock only once the lock is held, so decisions are made in lock order
    now = clock()
    if ask.reservation_id is not None and not dry_run:
        earlier = await _earlier_grant(session, ask)
        if earlier is not None:
            return earlier
    limits = resolve_limits(
        ask.provider,
        ask.account_settings,
        ask.month_start_day,
        stored["operator_overrides"],
        stored["operator_month_start_day"],
        stored["tenant_overrides"],
    )
    decision = _static_refusal(limits, ask)
    if decision is None and not dry_run:
        decision = await _grant_if_room(session, ask, limits, now)
    if decision is None:
        # a check, or a refusal to explain: which limit, and when capacity frees
        decision = await _decide_windows(session, ask, limits, now)
        if decision.granted and not dry_run:
            # the lock forbids it
            raise RuntimeError("usage changed while the account lock was held")
    if not decision.granted and not dry_run and ask.messages == 1:
        assert decision.limit is not None
        await enqueue(
            session,
            outbox,
            QuotaExceededV1(
                company_id=ask.company_id,
                payload=QuotaExceededPayload(
                    account_key=ask.account_key, limit=decision.limit, retry_at=decision.retry_at
                ),
            ),
        )
    return decision


async def _decide_windows(
    session: AsyncSession, ask: ReserveAsk, limits: AccountLimits, now: datetime
) -> Decision:
    refusals: list[tuple[datetime, WindowedLimit, int, int]] = []
    room: dict[str, int] = {}
    for usage in await repository.window_usage(
        session, ask.company_id, ask.account_key, limits, now
    ):
        demand = usage.limit.demand(ask.messages, ask.recipients)
        excess = usage.used + demand - usage.limit.maximum
        room[usage.limit.measure] = min(room.get(usage.limit.measure, -excess), -excess)
        if excess > 0:
            retry_at = await repository.earliest_capacity(
                session, ask.company_id, ask.account_key, limits, usage.limit, excess, now
            )
            refusals.append((retry_at, usage.limit, usage.used, demand))
    if refusals:
        # the ask passes only when every limit has room: the latest of their retry times
        retry_at, limit, used, demand = max(refusals, key=lambda r: r[0])
        asked = (
            "" if ask.messages == 1 else f", {demand} asked by a batch of {ask.messages} messages"
        )
        if demand > limit.maximum:
            asked += "; more than the limit allows at once"
        return Decision(
            False,
            limit=limit.name,
            retry_at=retry_at,
            detail=f"{limit.name} = {limit.maximum} would be passed ({used} used{asked})",
        )
    return Decision(
        True, room_messages=room.get("messages"), room_recipients=room.get("recipients")
    )


# --- settling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settlement:
    ok: bool
    found: bool  # not looked up when the used counts are invalid whatever was reserved
    detail: str = ""
    invalid: bool = False  # the commit's used counts are out of range: nothing was changed


def _invalid_counts(messages: int | None, recipients: int | None) -> str | None:
    """Why used counts can never be committed, whatever was reserved."""
    if messages is not None and not 1 <= messages <= MAX_BATCH_MESSAGES:
        return f"messages must be between 1 and {MAX_BATCH_MESSAGES}"
    if recipients is not None and not 1 <= recipients <= MAX_LIMIT:
        return f"recipients must be between 1 and {MAX_LIMIT}"
    if messages is not None and recipients is not None and recipients < messages:
        return f"{recipients} recipients cannot be the total of {messages} messages"
    return None


def _out_of_range(messages: int | None, recipients: int | None, reserved: Any) -> str:
    """Why used counts do not fit the reservation (``reserved``: its messages and recipients)."""
    if messages is not None and messages > reserved.messages:
        return f"{messages} messages used is more than the {reserved.messages} reserved"
    if recipients is not None and recipients > reserved.recipients:
        return f"{recipients} recipients used is more than the {reserved.recipients} reserved"
    used = reserved.messages if messages is None else messages
    return f"{recipients} recipients cannot be the total of {used} messages"


async def commit(
    session: AsyncSession,
    company_id: uuid.UUID,
    reservation_id: uuid.UUID,
    clock: Clock,
    *,
    messages: int | None = None,
    recipients: int | None = None,
) -> Settlement:
    """Make a reservation's usage final.  Idempotent; a late commit (after expiry) records the
    usage.

    ``messages`` / ``recipients`` name the part of a batch that was used (None: all that was
    reserved); only that counts from now on.  They must fit in the reservation, else nothing
    changes.
    """
    problem = _invalid_counts(messages, recipients)
    if problem:
        return Settlement(False, False, problem, invalid=True)
    now = clock()
    expires_at = await repository.commit_reserved(
        session, company_id, reservation_id, now, messages, recipients
    )
    if expires_at is not None:
        late = expires_at <= now
        return Settlement(
            True, True, "reservation had expired; the usage is recorded" if late else ""
        )
    existing = await repository.reservation_row(session, company_id, reservation_id)
    if existing is None:
        return Settlement(False, False, "no such reservation")
    if existing.state == ReservationState.COMMITTED:
        return Settlement(True, True, "already committed")
    if existing.state == ReservationState.RELEASED:
        return Settlement(False, True, "the reservation was released")
    return Settlement(False, True, _out_of_range(messages, recipients, existing), invalid=True)


async def release(
    session: AsyncSession,
    company_id: uuid.UUID,
    reservation_id: uuid.UUID,
    clock: Clock,
    *,
    remember: bool = False,
) -> Settlement:
    """Give a reservation's capacity back.  Idempotent; a committed reservation stays counted.

    ``remember``: the sender chose the id (NATS request/reply).  A sender that got no answer to its
    reserve releases at once, and that release may arrive first (the reserve still waits in the
    batcher); an unknown id is then recorded as released, so that the reserve, when it comes, is
    refused (see ``_earlier_grant``) instead of holding the capacity until its TTL.
    """
    if await repository.release_reserved(session, company_id, reservation_id, clock()):
        return Settlement(True, True)
    if remember:
        if await repository.record_release(session, company_id, reservation_id, clock()):
            return Settlement(False, False, "no such reservation")
        # the reserve committed while this waited on its row: release it now
        if await repository.release_reserved(session, company_id, reservation_id, clock()):
            return Settlement(True, True)
    state = await repository.state(session, company_id, reservation_id)
    if state is None:
        return Settlement(False, False, "no such reservation")
    if state == ReservationState.RELEASED:
        return Settlement(True, True, "already released")
    return Settlement(False, True, "the reservation was committed; its usage stays counted")
