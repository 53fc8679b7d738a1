"""Every statement of delivery, around the outgoing-message queue: rows claimed with ``FOR UPDATE
SKIP LOCKED``.

The hot path (the claim, the record before the end of data, the settle, the unsubscribe check, the
quota holds) is plain SQL on asyncpg connections, one prepared statement per step, each committed on
its own; the rest (giving back, rotation, recovery, the Sent copy's note, the queue's depth) is
SQLAlchemy Core on a session.  The sending accounts' queries are the accounts'
(``accounts/repository.py``).

Why PostgreSQL and not a JetStream work queue: R21 needs the attempt recorded
durably *before* the end of data, and the message state, the attempt row, the
``mail.sent`` outbox event and the idempotency key must change together.  In
PostgreSQL each step is one atomic statement or transaction; with a JetStream queue the
message would live in two places whose updates can disagree after a crash.
``SKIP LOCKED`` lets any number of workers and replicas claim disjoint rows.

State machine of ``outgoing_message.state``::

    queued ──claim──▶ sending ──250 after DATA──▶ sent ──mail.bounced──▶ bounced
      ▲                 │ │ │
      │                 │ │ └─ no reply after the final "." (drop, timeout, crash) ──▶ unknown
      │                 │ └─── 5xx, the last allowed attempt failed, or the recipient
      │                 │      unsubscribed from marketing mail meanwhile ──▶ failed
      │                 └───── 4xx / failure before the final "." / quota refused ──▶ deferred
      └──── next_attempt_at reached (deferred rows are claimed like queued ones) ──┘

    unknown ──mail.synced (its Message-ID in the Sent folder)──▶ sent
    unknown | failed | bounced ──POST /resend (on purpose)──▶ queued

Each claim adds a ``send_attempt`` row (phase ``connecting``); the phase becomes
``data`` in a committed transaction before the end-of-data mark (the final
"."), from which the server holds the message.  A message is
``sending`` only while a live worker holds it: ``claimed_by`` names the
process's PostgreSQL advisory lock, held on a dedicated connection for the
process's life.  The lock vanishes with the process (SIGKILL included), so
:func:`recover_abandoned` can tell an abandoned row from a busy one without
heartbeats: an attempt still ``connecting`` goes back to ``queued`` (the server
never had its end of data), an attempt in ``data`` becomes ``unknown`` and is never
resent by itself.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolAcquireContext
from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_proto.events import EventBase
from leadline_send.delivery.outcome import Outcome
from leadline_send.models import SCHEMA
from leadline_send.models import outgoing_message as m
from leadline_send.models import send_attempt as a
from leadline_send.states import (
    DUE,
    OPEN,
    REACHED_SERVER,
    AttemptPhase,
    MessageState,
    Reason,
    move,
    moves_into,
    sql,
)

S, P = MessageState, AttemptPhase

# a connection of a pool, ``async with``; each statement commits
Connection = Callable[[], PoolAcquireContext]
# what a step of the queue raises when the database is away or refuses
DB_ERRORS = (OSError, SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError)

ADVISORY_CLASS = 8104  # first key of pg_advisory_lock(int, int) for delivery-process liveness
# NOTIFY channel on which new or requeued messages wake the delivery workers of every process; the
# payload is how many messages there are
QUEUE_CHANNEL = f"{SCHEMA}_queue"


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    company_id: uuid.UUID
    user_id: uuid.UUID
    category: str
    account_key: str
    provider: str
    message_id: str
    envelope_from: str
    recipients: list[str]
    draft: dict[str, Any]
    raw: bytes
    size_bytes: int
    attempt: int
    created_at: datetime


# The hot path runs on plain asyncpg connections (see delivery.settling): one prepared statement per
# step, each committed on its own — a claim, the "data" record before the end of data, a settle.
# Through SQLAlchemy each step cost more CPU than speaking SMTP for the message.
# unscoped: the claim takes due messages of every company for this worker
_CLAIM = """
WITH due AS (
    SELECT id FROM outgoing_message
    WHERE state IN {due} AND next_attempt_at <= now() {account_filter}
    ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE outgoing_message AS m
    SET state = '{sending}', claimed_by = $2, attempts = m.attempts + 1, updated_at = now()
    FROM due WHERE m.id = due.id
    RETURNING m.id, m.company_id, m.user_id, m.category, m.account_key, m.provider, m.message_id,
              m.envelope_from, m.recipients, m.draft, m.raw, m.size_bytes, m.attempts, m.created_at,
              m.next_attempt_at
), attempt AS (
    INSERT INTO send_attempt (message_id, number, account_key, phase)
    SELECT id, attempts, account_key, '{connecting}' FROM claimed
)
SELECT * FROM claimed ORDER BY next_attempt_at
"""
_CLAIM_NAMES = {"due": sql(DUE), "sending": S.SENDING, "connecting": P.CONNECTING}
CLAIM_ANY = _CLAIM.format(account_filter="", **_CLAIM_NAMES)
CLAIM_FOR_ACCOUNT = _CLAIM.format(account_filter="AND account_key = $3", **_CLAIM_NAMES)

# unscoped: by the ids of messages this worker claimed
HOLD_RESERVATION = f"""
UPDATE outgoing_message SET reservation_id = $1 WHERE id = ANY($2::uuid[]) AND state = '{S.SENDING}' AND claimed_by = $3
"""  # noqa: S608, E501 - only the states' enum values are formatted in
HOLD_QUOTA = "INSERT INTO quota_hold (reservation_id, company_id, holder) VALUES ($1, $2, $3)"
# unscoped: by the id of a reservation this worker holds
FORGET_QUOTA = "DELETE FROM quota_hold WHERE reservation_id = $1"

# unscoped: by the id of a message this worker claimed
RECORD_DATA = f"""
WITH attempt AS (
    UPDATE send_attempt SET phase = '{move(P.CONNECTING, P.DATA)}'
    WHERE message_id = $1 AND number = $2 AND phase = '{P.CONNECTING}'
    RETURNING message_id
)
UPDATE outgoing_message SET reservation_id = $4
WHERE id = (SELECT message_id FROM attempt) AND state = '{S.SENDING}' AND claimed_by = $3
RETURNING id
"""  # noqa: S608 - only the states' enum values are formatted in


# The record before the end of data of a message whose row already names its lease's reservation
# (HOLD_RESERVATION): only the attempt changes.  A new version of the wide message row (and of each
# of its indexes) per message was a fifth of the database's work for a message.
_RECORDED_UNDER_LEASE = """recorded AS (
    UPDATE send_attempt AS a SET phase = '{data}'
    FROM outgoing_message AS m
    WHERE a.message_id = ${message} AND a.number = ${number} AND a.phase = '{connecting}'
      AND m.id = a.message_id AND m.state = '{sending}' AND m.claimed_by = ${worker}
      AND m.reservation_id = ${reservation}
    RETURNING a.message_id
)"""


def _recorded_under_lease(first: int) -> str:
    """Parameters from ``$first``: message id, attempt number, worker key, reservation id."""
    return _RECORDED_UNDER_LEASE.format(
        message=first,
        number=first + 1,
        worker=first + 2,
        reservation=first + 3,
        data=move(P.CONNECTING, P.DATA),
        connecting=P.CONNECTING,
        sending=S.SENDING,
    )


def _statement(ctes: list[str], result: str) -> str:
    return "WITH " + ",\n".join(ctes) + "\nSELECT " + result


RECORD_DATA_UNDER_LEASE = _statement([_recorded_under_lease(1)], "message_id FROM recorded")

# An attempt settles only from a phase PHASE_MOVES lets into done: a settled one is left as it is.
_SETTLES_FROM = sql(moves_into(P.DONE))
# The end of an attempt: $1 message, $2 attempt, $3 state, $4 outcome, $5 reply, $6 next attempt, $7
# error.
_SETTLED = f"""attempt AS (
    UPDATE send_attempt SET phase = '{P.DONE}', outcome = $4, reply = $5, finished_at = now()
    WHERE message_id = $1 AND number = $2 AND phase IN {_SETTLES_FROM}
), settled AS (
    UPDATE outgoing_message
    SET state = $3, claimed_by = NULL, updated_at = now(), last_error = $7,
        smtp_reply = coalesce($5, smtp_reply), next_attempt_at = coalesce($6, next_attempt_at),
        sent_at = CASE WHEN $3 = '{S.SENT}' THEN now() ELSE sent_at END
    WHERE id = $1 AND state = '{S.SENDING}'
)"""  # noqa: S608 - only the states' enum values are formatted in
SETTLE = _statement([_SETTLED], "1")

# Accepted by the server: the state, the attempt and the mail.sent event in the outbox (the kit's
# table and relay) in one statement.  No NOTIFY: the settling process wakes its own relay, or with
# LEADLINE_OUTBOX_RELAY=false the API processes' once per burst (Settling.wake_relay); one per
# message woke the relay of every replica, and all but one found nothing.  $1 message, $2 attempt,
# $3 reply, $4 error, $5-$7 event id, subject, body.
_SENT = f"""attempt AS (
    UPDATE send_attempt SET phase = '{P.DONE}', outcome = '{Reason.SENT}', reply = $3, finished_at = now()
    WHERE message_id = $1 AND number = $2 AND phase IN {_SETTLES_FROM}
), message AS (
    UPDATE outgoing_message
    SET state = '{S.SENT}', claimed_by = NULL, updated_at = now(), last_error = $4, smtp_reply = $3,
        sent_at = now()
    WHERE id = $1 AND state = '{S.SENDING}'
    RETURNING id
), event AS (
    INSERT INTO outbox (event_id, subject, body) SELECT $5, $6, $7 FROM message
)"""  # noqa: S608, E501 - only the states' enum values are formatted in
SETTLE_SENT = _statement([_SENT], "1")

# A worker's last answer settled and its next message recorded (under a lease) in one durable
# statement: one commit and one round trip where a settle and a record were two of each on the
# path of every message.  Atomic, so a worker still never has two messages recorded and unsettled.
SETTLE_THEN_RECORD = _statement([_SETTLED, _recorded_under_lease(8)], "message_id FROM recorded")
SETTLE_SENT_THEN_RECORD = _statement([_SENT, _recorded_under_lease(8)], "message_id FROM recorded")

# What a batch reservation was used for: the messages that reached the server (or may have).
# unscoped: by the id of a reservation this worker holds
RESERVATION_USE = f"""
SELECT count(*) AS messages, coalesce(sum(jsonb_array_length(recipients)), 0) AS recipients
FROM outgoing_message WHERE reservation_id = $1 AND state IN {sql(REACHED_SERVER)}
"""  # noqa: S608 - only the states' enum values are formatted in


async def claim(
    conn: asyncpg.Connection, worker_key: int, limit: int, account_key: str | None
) -> list[Claimed]:
    """Claim up to ``limit`` due messages, preferring ``account_key`` so an open connection is
    reused."""
    rows: list[asyncpg.Record] = []
    if account_key:
        rows = await conn.fetch(CLAIM_FOR_ACCOUNT, limit, worker_key, account_key)
    if not rows:
        rows = await conn.fetch(CLAIM_ANY, limit, worker_key)
    return [
        Claimed(
            id=r["id"],
            company_id=r["company_id"],
            user_id=r["user_id"],
            category=r["category"],
            account_key=r["account_key"],
            provider=r["provider"],
            message_id=r["message_id"],
            envelope_from=r["envelope_from"],
            recipients=list(r["recipients"]),
            draft=dict(r["draft"]),
            raw=r["raw"],
            size_bytes=r["size_bytes"],
            attempt=r["attempts"],
            created_at=r["created_at"],
        )
        for r in rows
    ]


async def hold_reservation(
    conn: asyncpg.Connection, messages: list[Claimed], worker_key: int, reservation_id: uuid.UUID
) -> None:
    """Name a lease's reservation on the messages it covers: what reached the server under it is
    what recovery commits if this process dies."""
    await conn.execute(HOLD_RESERVATION, reservation_id, [m.id for m in messages], worker_key)


async def hold_quota(conn: asyncpg.Connection, company_id: uuid.UUID, worker_key: int) -> uuid.UUID:
    """A new reservation id, recorded as held by this process *before* the quota service is asked:
    a process killed at any moment after the ask leaves a hold that recovery settles."""
    reservation_id = uuid.uuid4()
    await conn.execute(HOLD_QUOTA, reservation_id, company_id, worker_key)
    return reservation_id


async def forget_quota(conn: asyncpg.Connection, reservation_id: uuid.UUID) -> None:
    """The quota service has answered the settle: the hold is over."""
    await conn.execute(FORGET_QUOTA, reservation_id)


async def record_data_started(
    conn: asyncpg.Connection,
    message: Claimed,
    worker_key: int,
    reservation_id: uuid.UUID | None,
    *,
    leased: bool,
) -> bool:
    """Committed before the end of data (R21): from here on a lost reply means ``unknown``, never a
    retry.

    ``leased``: the reservation is already named on the message's row.  False if the message is no
    longer this worker's to send (then its end of data must not be sent).
    """
    statement = RECORD_DATA_UNDER_LEASE if leased else RECORD_DATA
    return (
        await conn.fetchval(statement, message.id, message.attempt, worker_key, reservation_id)
        is not None
    )


@dataclass(frozen=True)
class Settlement:
    """How an attempt ends: what its settle writes (the message's outcome, and for a sent one its
    ``mail.sent`` event, written to the outbox in the same statement)."""

    message: Claimed
    outcome: Outcome
    event: EventBase | None = None

    @property
    def state(self) -> MessageState:
        return self.outcome.state

    def statement(self, *, then_record: bool) -> tuple[str, tuple[Any, ...]]:
        """The settle's statement, alone or followed by the next message's record, and its arguments
        (the record's come after them)."""
        m, o = self.message, self.outcome
        if o.state == S.SENT and self.event is not None:
            return SETTLE_SENT_THEN_RECORD if then_record else SETTLE_SENT, (
                m.id,
                m.attempt,
                o.reply,
                o.error,
                self.event.event_id,
                self.event.subject,
                self.event.model_dump_json().encode(),
            )
        return SETTLE_THEN_RECORD if then_record else SETTLE, (
            m.id,
            m.attempt,
            o.state,
            o.reason,
            o.reply,
            o.retry_at,
            o.error,
        )


async def settle(conn: asyncpg.Connection, settlement: Settlement) -> None:
    """End the current attempt and move the message to its state (``sent``: with its event,
    atomically)."""
    statement, arguments = settlement.statement(then_record=False)
    await conn.execute(statement, *arguments)


async def settle_then_record(
    conn: asyncpg.Connection,
    settlement: Settlement,
    message: Claimed,
    worker_key: int,
    reservation_id: uuid.UUID,
) -> bool:
    """``settlement`` and the record before the end of data of the worker's next ``message`` (held
    under the lease ``reservation_id``), in one statement: both or neither.  False if ``message`` is
    no longer this worker's to send (the settle still happened)."""
    statement, arguments = settlement.statement(then_record=True)
    return (
        await conn.fetchval(
            statement, *arguments, message.id, message.attempt, worker_key, reservation_id
        )
        is not None
    )


UNSUBSCRIBED = (
    "SELECT 1 FROM unsubscribe WHERE company_id = $1 AND address = ANY($2::text[]) LIMIT 1"
)


async def take_liveness_lock(conn: asyncpg.Connection, instance_key: int) -> None:
    """This process's advisory lock, held by ``conn`` for the process's life: while it is held,
    recovery leaves the process's rows alone."""
    await conn.execute("SELECT pg_advisory_lock($1, $2)", ADVISORY_CLASS, instance_key)


async def unsubscribed(
    conn: asyncpg.Connection, company_id: uuid.UUID, recipients: list[str]
) -> bool:
    """Whether one of ``recipients`` unsubscribed from the company's marketing mail."""
    return bool(await conn.fetchval(UNSUBSCRIBED, company_id, recipients))


async def reservation_use(conn: asyncpg.Connection, reservation_id: uuid.UUID) -> tuple[int, int]:
    """(messages, recipients) of a reservation that reached the server or may have."""
    row = await conn.fetchrow(RESERVATION_USE, reservation_id)
    assert row is not None
    return int(row["messages"]), int(row["recipients"])


async def give_back(session: AsyncSession, messages: list[Claimed]) -> None:
    """Claimed but not started (the worker is stopping): queued again, the attempt does not
    count."""
    for message in messages:
        await session.execute(
            # unscoped: by the id of a message this worker claimed
            update(m)
            .where(m.c.id == message.id, m.c.state == S.SENDING)
            .values(
                state=move(S.SENDING, S.QUEUED),
                claimed_by=None,
                attempts=m.c.attempts - 1,
                updated_at=func.now(),
            )
        )
        await session.execute(
            a.delete().where(
                a.c.message_id == message.id,
                a.c.number == message.attempt,
                a.c.phase == P.CONNECTING,
            )
        )


async def note_sent_copy(session: AsyncSession, message_ids: list[uuid.UUID], note: str) -> None:
    """What became of the Sent copy of messages sent (``saved to ...`` or ``not saved: ...``)."""
    # unscoped: by the ids of messages this worker sent
    await session.execute(update(m).where(m.c.id.in_(message_ids)).values(sent_copy=note))


async def current_phase(conn: asyncpg.Connection, message: Claimed) -> AttemptPhase | None:
    phase: str | None = await conn.fetchval(
        "SELECT phase FROM send_attempt WHERE message_id = $1 AND number = $2",
        message.id,
        message.attempt,
    )
    return None if phase is None else AttemptPhase(phase)


async def switch_account(
    session: AsyncSession,
    message: Claimed,
    account_key: str,
    envelope_from: str,
    raw: bytes,
    from_address: str,
) -> None:
    """Rotation (R15): the message now goes out through another account of the same type."""
    await session.execute(
        # unscoped: by the id of a message this worker claimed
        update(m)
        .where(m.c.id == message.id)
        .values(
            account_key=account_key,
            envelope_from=envelope_from,
            raw=raw,
            size_bytes=len(raw),
            from_address=from_address,
        )
    )
    await session.execute(
        update(a)
        .where(a.c.message_id == message.id, a.c.number == message.attempt)
        .values(account_key=account_key)
    )


@dataclass(frozen=True)
class Recovered:
    id: uuid.UUID
    company_id: uuid.UUID
    state: MessageState


@dataclass(frozen=True)
class AbandonedHold:
    company_id: uuid.UUID
    reservation_id: uuid.UUID
    messages: int  # what reached the server (or may have) under it
    recipients: int


@asynccontextmanager
async def _gone(probe: asyncpg.Connection, holder: int) -> AsyncIterator[bool]:
    """Whether the process ``holder`` is gone: its advisory lock was free, and is held here for the
    block."""
    if not await probe.fetchval("SELECT pg_try_advisory_lock($1, $2)", ADVISORY_CLASS, holder):
        yield False
        return
    try:
        yield True
    finally:
        await probe.fetchval("SELECT pg_advisory_unlock($1, $2)", ADVISORY_CLASS, holder)


async def abandoned_holds(
    conn: asyncpg.Connection, probe: asyncpg.Connection, own_key: int
) -> list[AbandonedHold]:
    """The quota reservations held by processes that are gone, with what was used under each.

    A holder whose messages are still ``sending`` is left for the next pass, once recovery has
    decided those (an ``unknown`` one counts as used).
    """
    found: list[AbandonedHold] = []
    for holder in await conn.fetch(
        # unscoped: recovery looks at every company's holds of gone workers
        "SELECT DISTINCT holder FROM quota_hold WHERE holder <> $1",
        own_key,
    ):
        key = int(holder["holder"])
        async with _gone(probe, key) as gone:
            if not gone:
                continue
            if await conn.fetchval(
                (
                    # unscoped: recovery looks at a gone worker's rows of every company
                    f"SELECT 1 FROM outgoing_message WHERE state = '{S.SENDING}' AND claimed_by = "  # noqa: S608
                    f"$1 LIMIT 1"
                ),
                key,
            ):
                continue
            for hold in await conn.fetch(
                # unscoped: recovery takes back a gone worker's holds of every company
                "SELECT reservation_id, company_id FROM quota_hold WHERE holder = $1",
                key,
            ):
                messages, recipients = await reservation_use(conn, hold["reservation_id"])
                found.append(
                    AbandonedHold(hold["company_id"], hold["reservation_id"], messages, recipients)
                )
    return found


async def recover_abandoned(session: AsyncSession, probe: asyncpg.Connection) -> list[Recovered]:
    """Give back the ``sending`` rows of processes that are gone (their advisory lock is free)."""
    holders = (
        # unscoped: recovery looks at every company's sending rows
        await session.execute(select(m.c.claimed_by).where(m.c.state == S.SENDING).distinct())
    ).scalars()
    recovered: list[Recovered] = []
    for holder in list(holders):
        if holder is None:
            continue
        async with _gone(probe, int(holder)) as gone:
            if not gone:
                continue
            abandoned = (
                await session.execute(
                    # unscoped: recovery takes back a dead worker's rows of every company
                    select(m.c.id, m.c.company_id, m.c.attempts, a.c.phase)
                    .join(a, and_(a.c.message_id == m.c.id, a.c.number == m.c.attempts))
                    .where(m.c.state == S.SENDING, m.c.claimed_by == holder)
                    .with_for_update(of=m)
                )
            ).all()
            for r in abandoned:
                after_data = r.phase == P.DATA
                state = move(S.SENDING, S.UNKNOWN if after_data else S.QUEUED)
                await session.execute(
                    # unscoped: by the id of a row recovery just read and locked
                    update(m)
                    .where(m.c.id == r.id)
                    .values(
                        state=state,
                        claimed_by=None,
                        updated_at=func.now(),
                        next_attempt_at=func.now(),
                        last_error=(
                            "the sending process stopped once the message was recorded as going "
                            "out; the server may hold it"
                            if after_data
                            else (
                                "the sending process stopped before the message went out; queued "
                                "again"
                            )
                        ),
                    )
                )
                await session.execute(
                    update(a)
                    .where(a.c.message_id == r.id, a.c.number == r.attempts, a.c.phase == r.phase)
                    .values(
                        phase=move(P(r.phase), P.DONE),
                        outcome=Reason.INTERRUPTED,
                        finished_at=func.now(),
                    )
                )
                recovered.append(Recovered(r.id, r.company_id, state))
    return recovered


async def open_counts(session: AsyncSession) -> dict[str, int]:
    """How many messages are in each state still in motion (:data:`OPEN`); a state with none is left
    out."""
    return dict(
        (
            await session.execute(
                # unscoped: operators' queue-depth metric over every company
                select(m.c.state, func.count()).where(m.c.state.in_(OPEN)).group_by(m.c.state)
            )
        ).all()
    )
