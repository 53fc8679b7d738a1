"""The outgoing-message queue: PostgreSQL rows claimed with ``FOR UPDATE SKIP LOCKED``.

Why PostgreSQL and not a JetStream work queue: R21 needs the attempt recorded
durably *before* DATA, and the message state, the attempt row, the
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
      │                 └───── 4xx / failure before DATA / quota refused ──▶ deferred
      └──── next_attempt_at reached (deferred rows are claimed like queued ones) ──┘

    unknown ──mail.synced (its Message-ID in the Sent folder)──▶ sent
    unknown | failed | bounced ──POST /resend (on purpose)──▶ queued

Each claim adds a ``send_attempt`` row (phase ``connecting``); the phase becomes
``data`` in a committed transaction just before the DATA command.  A message is
``sending`` only while a live worker holds it: ``claimed_by`` names the
process's PostgreSQL advisory lock, held on a dedicated connection for the
process's life.  The lock vanishes with the process (SIGKILL included), so
:func:`recover_abandoned` can tell an abandoned row from a busy one without
heartbeats: an attempt still ``connecting`` goes back to ``queued`` (the server
never saw DATA), an attempt in ``data`` becomes ``unknown`` and is never
resent by itself.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import DateTime, LargeBinary, Text, and_, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.outbox import notify_channel
from leadline_proto.events import EventBase
from leadline_send.database import Executor
from leadline_send.models import SCHEMA
from leadline_send.models import outgoing_message as m
from leadline_send.models import send_attempt as a

ADVISORY_CLASS = 8104  # first key of pg_advisory_lock(int, int) for delivery-process liveness


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


# The hot path is one statement per step, each committed on its own (autocommit): a claim, the
# "data" record before DATA, and a settle without an event are single round trips.
_CLAIM = """
WITH due AS (
    SELECT id FROM outgoing_message
    WHERE state IN ('queued', 'deferred') AND next_attempt_at <= now() {account_filter}
    ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE outgoing_message AS m
    SET state = 'sending', claimed_by = :worker, attempts = m.attempts + 1, updated_at = now()
    FROM due WHERE m.id = due.id
    RETURNING m.id, m.company_id, m.user_id, m.category, m.account_key, m.provider, m.message_id,
              m.envelope_from, m.recipients, m.draft, m.raw, m.size_bytes, m.attempts, m.created_at
), attempt AS (
    INSERT INTO send_attempt (message_id, number, account_key, phase)
    SELECT id, attempts, account_key, 'connecting' FROM claimed
)
SELECT * FROM claimed
"""
_CLAIMED_COLUMNS = (m.c.id, m.c.company_id, m.c.user_id, m.c.category, m.c.account_key, m.c.provider,
                    m.c.message_id, m.c.envelope_from, m.c.recipients, m.c.draft, m.c.raw, m.c.size_bytes,
                    m.c.attempts, m.c.created_at)
CLAIM_ANY = text(_CLAIM.format(account_filter="")).columns(*_CLAIMED_COLUMNS)
CLAIM_FOR_ACCOUNT = text(_CLAIM.format(account_filter="AND account_key = :account_key")).columns(
    *_CLAIMED_COLUMNS)

RECORD_DATA = text("""
WITH attempt AS (
    UPDATE send_attempt SET phase = 'data'
    WHERE message_id = :id AND number = :number AND phase = 'connecting'
    RETURNING message_id
)
UPDATE outgoing_message SET reservation_id = :reservation_id
WHERE id = (SELECT message_id FROM attempt) AND state = 'sending' AND claimed_by = :worker
RETURNING id
""")

SETTLE = text("""
WITH attempt AS (
    UPDATE send_attempt SET phase = 'done', outcome = :outcome, reply = :reply, finished_at = now()
    WHERE message_id = :id AND number = :number
)
UPDATE outgoing_message
SET state = :state, claimed_by = NULL, updated_at = now(), last_error = :error,
    smtp_reply = coalesce(:reply, smtp_reply), next_attempt_at = coalesce(:next_attempt_at, next_attempt_at),
    sent_at = CASE WHEN :state = 'sent' THEN now() ELSE sent_at END
WHERE id = :id AND state = 'sending'
""").bindparams(bindparam("next_attempt_at", type_=DateTime(timezone=True)), bindparam("reply", type_=Text),
                bindparam("error", type_=Text))

async def claim(db: Executor, worker_key: int, limit: int, account_key: str | None) -> list[Claimed]:
    """Claim up to ``limit`` due messages, preferring ``account_key`` so an open connection is reused."""
    rows: list[Any] = []
    if account_key:
        rows = list((await db.execute(CLAIM_FOR_ACCOUNT, {"limit": limit, "worker": worker_key,
                                                          "account_key": account_key})).all())
    if not rows:
        rows = list((await db.execute(CLAIM_ANY, {"limit": limit, "worker": worker_key})).all())
    return [Claimed(id=r.id, company_id=r.company_id, user_id=r.user_id, category=r.category,
                    account_key=r.account_key, provider=r.provider, message_id=r.message_id,
                    envelope_from=r.envelope_from, recipients=list(r.recipients), draft=dict(r.draft), raw=r.raw,
                    size_bytes=r.size_bytes, attempt=r.attempts, created_at=r.created_at) for r in rows]


async def record_data_started(db: Executor, message: Claimed, worker_key: int,
                              reservation_id: uuid.UUID | None) -> bool:
    """Committed before DATA (R21): from here on a lost reply means ``unknown``, never a retry.

    False if the message is no longer this worker's to send (then DATA must not be sent).
    """
    done = await db.execute(RECORD_DATA, {"id": message.id, "number": message.attempt, "worker": worker_key,
                                          "reservation_id": reservation_id})
    return done.first() is not None


async def give_back(session: AsyncSession, messages: list[Claimed]) -> None:
    """Claimed but not started (the worker is stopping): queued again, the attempt does not count."""
    for message in messages:
        await session.execute(update(m).where(m.c.id == message.id, m.c.state == "sending").values(
            state="queued", claimed_by=None, attempts=m.c.attempts - 1, updated_at=func.now()))
        await session.execute(a.delete().where(a.c.message_id == message.id, a.c.number == message.attempt,
                                               a.c.phase == "connecting"))


async def current_phase(session: AsyncSession, message: Claimed) -> str | None:
    return await session.scalar(select(a.c.phase).where(a.c.message_id == message.id,
                                                        a.c.number == message.attempt))


async def switch_account(session: AsyncSession, message: Claimed, account_key: str, envelope_from: str,
                         raw: bytes, from_address: str) -> None:
    """Rotation (R15): the message now goes out through another account of the same type."""
    await session.execute(update(m).where(m.c.id == message.id).values(
        account_key=account_key, envelope_from=envelope_from, raw=raw, size_bytes=len(raw),
        from_address=from_address))
    await session.execute(update(a).where(a.c.message_id == message.id, a.c.number == message.attempt)
                          .values(account_key=account_key))


# Accepted by the server: the state, the attempt and the mail.sent event in the outbox (the kit's
# table and relay, woken by the same notification as leadline_kit.outbox.enqueue) in one statement.
SETTLE_SENT = text("""
WITH attempt AS (
    UPDATE send_attempt SET phase = 'done', outcome = 'sent', reply = :reply, finished_at = now()
    WHERE message_id = :id AND number = :number
), message AS (
    UPDATE outgoing_message
    SET state = 'sent', claimed_by = NULL, updated_at = now(), last_error = :error, smtp_reply = :reply,
        sent_at = now()
    WHERE id = :id AND state = 'sending'
    RETURNING id
), event AS (
    INSERT INTO outbox (event_id, subject, body) SELECT :event_id, :subject, :body FROM message
    RETURNING event_id
)
SELECT pg_notify(:channel, '') FROM event
""").bindparams(bindparam("reply", type_=Text), bindparam("error", type_=Text),
                bindparam("body", type_=LargeBinary))


async def settle_sent(db: Executor, message: Claimed, event: EventBase, *, reply: str | None,
                      error: str | None) -> None:
    """The server accepted the message: ``sent``, with its event, atomically."""
    await db.execute(SETTLE_SENT, {"id": message.id, "number": message.attempt, "reply": reply, "error": error,
                                   "event_id": event.event_id, "subject": event.subject,
                                   "body": event.model_dump_json().encode(), "channel": notify_channel(SCHEMA)})


async def settle(db: Executor, message: Claimed, *, state: str, outcome: str, reply: str | None,
                 next_attempt_at: datetime | None = None, error: str | None = None) -> None:
    """End the current attempt and move the message to ``state``."""
    await db.execute(SETTLE, {"id": message.id, "number": message.attempt, "state": state, "outcome": outcome,
                              "reply": reply, "next_attempt_at": next_attempt_at, "error": error})


@dataclass(frozen=True)
class Recovered:
    id: uuid.UUID
    company_id: uuid.UUID
    state: str
    reservation_id: uuid.UUID | None


async def recover_abandoned(session: AsyncSession, probe: asyncpg.Connection) -> list[Recovered]:
    """Give back the ``sending`` rows of processes that are gone (their advisory lock is free)."""
    holders = (await session.execute(select(m.c.claimed_by).where(m.c.state == "sending").distinct())).scalars()
    recovered: list[Recovered] = []
    for holder in list(holders):
        if holder is None or not await probe.fetchval("SELECT pg_try_advisory_lock($1, $2)",
                                                      ADVISORY_CLASS, int(holder)):
            continue
        try:
            abandoned = (await session.execute(
                select(m.c.id, m.c.company_id, m.c.reservation_id, m.c.attempts, a.c.phase)
                .join(a, and_(a.c.message_id == m.c.id, a.c.number == m.c.attempts))
                .where(m.c.state == "sending", m.c.claimed_by == holder).with_for_update(of=m)
            )).all()
            for r in abandoned:
                after_data = r.phase == "data"
                await session.execute(update(m).where(m.c.id == r.id).values(
                    state="unknown" if after_data else "queued", claimed_by=None, updated_at=func.now(),
                    next_attempt_at=func.now(),
                    last_error=("the sending process stopped after DATA began; the server may hold the message"
                                if after_data else "the sending process stopped before DATA; queued again")))
                await session.execute(update(a).where(a.c.message_id == r.id, a.c.number == r.attempts)
                                      .values(phase="done", outcome="interrupted", finished_at=func.now()))
                recovered.append(Recovered(r.id, r.company_id, "unknown" if after_data else "queued",
                                           r.reservation_id))
        finally:
            await probe.fetchval("SELECT pg_advisory_unlock($1, $2)", ADVISORY_CLASS, int(holder))
    return recovered
