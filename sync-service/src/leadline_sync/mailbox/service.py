"""Mailbox lifecycle: connect, update, disconnect, statuses, the error log and mailbox-limit slots.

Statuses (R8, R9)::

    connect ──► pending ──(slot granted)──► enabled ◄──(login works again)── error
                   ▲                           │                               ▲
                   └──(slot pending)           └──(any failure)────────────────┘
    error for 48 h without one success ──► connection_failed (retries stop, slot released)
    disconnect (any status) ──► disabled (credentials erased, slot released)

Each change writes the row and enqueues ``mailbox.status_changed`` in one
transaction.  The slot column tracks the conversation with the quota service:
``unclaimed`` (ask), ``granted``, ``pending``, ``releasing`` (tell it, retried
by the scheduler until it answers) and ``released``.  Nothing here commits:
the caller's unit of work does.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.outbox import enqueue
from leadline_proto.events import (
    MailboxConnectedV1,
    MailboxConnectionPayload,
    MailboxDisconnectedV1,
    MailboxStatus,
    MailboxStatusChangedV1,
    MailboxStatusPayload,
)
from leadline_sync.mailbox.fixes import fix_for
from leadline_sync.models import mailbox, mailbox_error, outbox

log = logging.getLogger("leadline.sync.mailbox")

MailboxRow = Row[Any]


async def active_mailbox(session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID, *,
                         for_update: bool = False) -> MailboxRow | None:
    """The user's connected mailbox (any status but disabled), if any."""
    statement = select(mailbox).where(mailbox.c.company_id == company_id, mailbox.c.user_id == user_id,
                                      mailbox.c.status != "disabled")
    if for_update:
        statement = statement.with_for_update()
    return (await session.execute(statement)).first()


async def mailbox_by_id(session: AsyncSession, mailbox_id: uuid.UUID, *, for_update: bool = False) -> MailboxRow | None:
    statement = select(mailbox).where(mailbox.c.id == mailbox_id)
    if for_update:
        statement = statement.with_for_update()
    return (await session.execute(statement)).first()


async def set_status(session: AsyncSession, row: MailboxRow, status: MailboxStatus, reason: str, now: datetime,
                     **values: Any) -> None:
    """Move a mailbox to ``status`` (with any other column ``values``); an event only if the status changed."""
    await session.execute(update(mailbox).where(mailbox.c.id == row.id).values(
        status=status, status_reason=reason, updated_at=now, **values))
    if status != row.status:
        await enqueue(session, outbox, MailboxStatusChangedV1(
            company_id=row.company_id, correlation_id=str(row.id),
            payload=MailboxStatusPayload(mailbox_id=row.id, user_id=row.user_id, address=row.address, status=status,
                                         previous_status=row.status, reason=reason)))
        log.info("mailbox %s: %s -> %s", row.id, row.status, status)


async def record_error(session: AsyncSession, row: MailboxRow, kind: str, message: str, now: datetime) -> None:
    """One entry of the error log the user reads: when, what, how to fix (R8)."""
    await session.execute(mailbox_error.insert().values(
        id=uuid.uuid4(), company_id=row.company_id, mailbox_id=row.id, occurred_at=now, kind=kind,
        message=message, fix=fix_for(kind)))


def connection_payload(row: MailboxRow, keep_history: bool = True) -> MailboxConnectionPayload:
    return MailboxConnectionPayload(mailbox_id=row.id, user_id=row.user_id, address=row.address,
                                    smtp_use=row.smtp_use, provider=row.provider, keep_history=keep_history)


async def announce_connected(session: AsyncSession, row: MailboxRow) -> None:
    await enqueue(session, outbox, MailboxConnectedV1(company_id=row.company_id, correlation_id=str(row.id),
                                                      payload=connection_payload(row)))


async def disconnect(session: AsyncSession, row: MailboxRow, keep_history: bool, now: datetime) -> None:
    """Disable sync (R11): erase the credentials, give the slot back, tell the lead service what to keep."""
    slot = "releasing" if row.slot in ("granted", "pending") else "released"
    await set_status(session, row, "disabled", "sync disabled by the user", now, disabled_at=now, slot=slot,
                     credential_key_id=None, credential_wrapped_key=None, credential_ciphertext=None,
                     lease_owner=None, lease_expires_at=None)
    await enqueue(session, outbox, MailboxDisconnectedV1(company_id=row.company_id, correlation_id=str(row.id),
                                                         payload=connection_payload(row, keep_history)))


@dataclass(frozen=True)
class SlotAnswer:
    status: str  # granted | pending | released | invalid | unavailable
    position: int | None = None
    detail: str = ""


async def apply_slot_answer(session: AsyncSession, mailbox_id: uuid.UUID, answer: SlotAnswer, now: datetime) -> None:
    """Apply the quota service's answer to a claim made for ``mailbox_id`` (which may have changed since)."""
    row = await mailbox_by_id(session, mailbox_id, for_update=True)
    if row is None or row.slot != "unclaimed":
        return
    if row.status in ("disabled", "connection_failed"):
        # disconnected while we asked: hand back whatever we were given
        await session.execute(update(mailbox).where(mailbox.c.id == row.id).values(slot="releasing"))
        return
    if answer.status == "granted":
        await set_status(session, row, "enabled", "", now, slot="granted", next_attempt_at=now, failures=0,
                         failing_since=None)
    elif answer.status == "pending":
        position = f" (position {answer.position} in the queue)" if answer.position else ""
        await set_status(session, row, "pending",
                         f"waiting for a free mailbox in the company's mailbox limit{position}", now, slot="pending")
    else:
        # no answer (or one we cannot use): stay unclaimed, the scheduler asks again
        message = ("The company mailbox limit could not be checked right now" +
                   (f": {answer.detail}" if answer.detail else "") + ".")
        if row.status_reason != message:  # once per outage, not once per retry
            await record_error(session, row, "mailbox_limit_unavailable", message, now)
        await set_status(session, row, "error", message, now)


async def slot_granted(session: AsyncSession, company_id: uuid.UUID, mailbox_id: uuid.UUID, now: datetime) -> None:
    """The quota service gave a pending mailbox its slot (R9): it becomes enabled by itself."""
    row = await mailbox_by_id(session, mailbox_id, for_update=True)
    if row is None or row.company_id != company_id or row.slot not in ("pending", "unclaimed"):
        return
    if row.status in ("disabled", "connection_failed"):
        await session.execute(update(mailbox).where(mailbox.c.id == row.id).values(slot="releasing"))
        return
    await set_status(session, row, "enabled", "", now, slot="granted", next_attempt_at=now, failures=0,
                     failing_since=None)


def retry_delay(failures: int, base: float, cap: float, jitter: float) -> timedelta:
    """Exponential backoff with jitter (``jitter`` in [0.5, 1]) so that many mailboxes do not retry in step."""
    return timedelta(seconds=min(cap, base * 2 ** min(failures, 16)) * jitter)
