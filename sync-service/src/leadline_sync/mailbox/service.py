"""Mailbox lifecycle: connect, update, disconnect, statuses, the error log and mailbox-limit slots.

Every status change goes through :func:`transition`, which refuses a move the
diagram in :mod:`leadline_sync.mailbox.states` does not allow, writes the row
with the columns that belong to the move, and enqueues
``mailbox.status_changed`` in the same transaction.  Nothing here commits: the
caller's unit of work does.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.outbox import enqueue
from leadline_mail.net import ErrorKind
from leadline_proto.events import (
    MailboxConnectedV1,
    MailboxConnectionPayload,
    MailboxDisconnectedV1,
    MailboxStatusChangedV1,
    MailboxStatusPayload,
)
from leadline_proto.requests import MailboxSlotStatus
from leadline_sync.mailbox import repository
from leadline_sync.mailbox.fixes import fix_for
from leadline_sync.mailbox.states import (
    MailboxStatus,
    Slot,
    check_move,
    check_slot_move,
    slot_given_back,
)
from leadline_sync.models import outbox

log = logging.getLogger("leadline.sync.mailbox")

MailboxRow = Row[Any]


def _status_changed(
    row: MailboxRow, to: MailboxStatus, previous: MailboxStatus | None, reason: str
) -> MailboxStatusChangedV1:
    return MailboxStatusChangedV1(
        company_id=row.company_id,
        correlation_id=str(row.id),
        payload=MailboxStatusPayload(
            mailbox_id=row.id,
            user_id=row.user_id,
            address=row.address,
            status=to.value,
            previous_status=previous.value if previous else None,
            reason=reason,
        ),
    )


async def transition(
    session: AsyncSession,
    row: MailboxRow,
    to: MailboxStatus,
    reason: str,
    now: datetime,
    *,
    slot: Slot | None = None,
    retry_at: datetime | None = None,
    failing_since: datetime | None = None,
) -> None:
    """Move a mailbox (``row``, locked by the caller) to ``to`` with ``reason``; an event if the
    status changed.

    The columns that belong to a move are set here: entering ``enabled``
    clears the failure count; ``failing_since`` counts one more failed
    connection; ``retry_at`` gives the lease back and schedules the next
    attempt; ``connection_failed`` and ``disabled`` give the lease and the
    slot back, and ``disabled`` erases the credentials.  ``slot`` is the new
    slot, checked against its own table.
    """
    previous = check_move(row.status, to)
    values: dict[str, Any] = {"status": to, "status_reason": reason, "updated_at": now}
    if slot is not None:
        check_slot_move(row.slot, slot)
        values["slot"] = slot
        if slot == Slot.GRANTED:
            values["next_attempt_at"] = now
    if to == MailboxStatus.ENABLED:
        values.update(failures=0, failing_since=None)
    if failing_since is not None:
        values.update(failures=row.failures + 1, failing_since=failing_since)
    if retry_at is not None:
        values.update(next_attempt_at=retry_at, lease_owner=None, lease_expires_at=None)
    if to in (MailboxStatus.CONNECTION_FAILED, MailboxStatus.DISABLED):
        given_back = slot_given_back(row.slot)
        check_slot_move(row.slot, given_back)
        values.update(lease_owner=None, lease_expires_at=None, slot=given_back)
    if to == MailboxStatus.DISABLED:
        values.update(
            disabled_at=now,
            credential_key_id=None,
            credential_wrapped_key=None,
            credential_ciphertext=None,
        )
    await repository.write_move(session, row.id, values)
    if to != previous:
        await enqueue(session, outbox, _status_changed(row, to, previous, reason))
        log.info("mailbox %s: %s -> %s", row.id, previous, to)


async def move_slot(session: AsyncSession, mailbox_id: uuid.UUID, start: Slot, to: Slot) -> None:
    """Move a slot by itself (the status unchanged), if it is still ``start``."""
    check_slot_move(start, to)
    await repository.move_slot(session, mailbox_id, start, to)


async def announce_created(session: AsyncSession, row: MailboxRow) -> None:
    """A new mailbox (status :data:`INITIAL`): ``mailbox.connected`` and its first
    ``mailbox.status_changed``."""
    await enqueue(
        session,
        outbox,
        MailboxConnectedV1(
            company_id=row.company_id, correlation_id=str(row.id), payload=connection_payload(row)
        ),
        _status_changed(row, MailboxStatus(row.status), None, row.status_reason),
    )


async def update_settings(
    session: AsyncSession, row: MailboxRow, now: datetime, values: dict[str, Any]
) -> None:
    """New server settings and credentials for a connected mailbox (not a status change)."""
    await repository.update_settings(session, row.id, now, values)


async def record_error(
    session: AsyncSession, row: MailboxRow, kind: ErrorKind, message: str, now: datetime
) -> None:
    """One entry of the error log the user reads: when, what, how to fix (R8)."""
    await repository.insert_error(
        session, row.company_id, row.id, now, kind, message, fix_for(kind, row.provider)
    )


def connection_payload(row: MailboxRow, keep_history: bool = True) -> MailboxConnectionPayload:
    return MailboxConnectionPayload(
        mailbox_id=row.id,
        user_id=row.user_id,
        address=row.address,
        smtp_use=row.smtp_use,
        provider=row.provider,
        keep_history=keep_history,
    )


async def disconnect(
    session: AsyncSession, row: MailboxRow, keep_history: bool, now: datetime
) -> None:
    """Disable sync (R11): erase the credentials, give the slot back, tell the lead service what to
    keep."""
    await transition(session, row, MailboxStatus.DISABLED, "sync disabled by the user", now)
    await enqueue(
        session,
        outbox,
        MailboxDisconnectedV1(
            company_id=row.company_id,
            correlation_id=str(row.id),
            payload=connection_payload(row, keep_history),
        ),
    )


@dataclass(frozen=True)
class SlotAnswer:
    status: MailboxSlotStatus | None  # None: no usable answer (nobody answered, or unreadably)
    position: int | None = None
    detail: str = ""


async def apply_slot_answer(
    session: AsyncSession, mailbox_id: uuid.UUID, answer: SlotAnswer, now: datetime
) -> None:
    """Apply the quota service's answer to a claim made for ``mailbox_id`` (which may have changed
    since).

    A mailbox disconnected (or given up) while we asked has its slot given
    back already (``releasing`` or ``released``), so the answer is ignored.
    """
    row = await repository.mailbox_by_id(session, mailbox_id, for_update=True)
    if row is None or row.slot != Slot.UNCLAIMED:
        return
    if answer.status == MailboxSlotStatus.GRANTED:
        await transition(session, row, MailboxStatus.ENABLED, "", now, slot=Slot.GRANTED)
    elif answer.status == MailboxSlotStatus.PENDING:
        position = f" (position {answer.position} in the queue)" if answer.position else ""
        await transition(
            session,
            row,
            MailboxStatus.PENDING,
            f"waiting for a free mailbox in the company's mailbox limit{position}",
            now,
            slot=Slot.PENDING,
        )
    else:
        # no answer (or one we cannot use): stay unclaimed, the scheduler asks again
        message = (
            "The company mailbox limit could not be checked right now"
            + (f": {answer.detail}" if answer.detail else "")
            + "."
        )
        if row.status_reason != message:  # once per outage, not once per retry
            await record_error(session, row, ErrorKind.MAILBOX_LIMIT_UNAVAILABLE, message, now)
        await transition(session, row, MailboxStatus.ERROR, message, now)


async def slot_granted(
    session: AsyncSession, company_id: uuid.UUID, mailbox_id: uuid.UUID, now: datetime
) -> None:
    """The quota service gave a pending mailbox its slot (R9): it becomes enabled by itself."""
    row = await repository.mailbox_by_id(session, mailbox_id, for_update=True)
    if (
        row is None
        or row.company_id != company_id
        or row.slot not in (Slot.PENDING, Slot.UNCLAIMED)
    ):
        return  # a slot given back already (disconnected, given up) stays given back
    await transition(session, row, MailboxStatus.ENABLED, "", now, slot=Slot.GRANTED)


def waiting_reason(row: MailboxRow, now: datetime, rotation_seconds: float) -> str:
    """The status reason to show: the stored one, or why an enabled mailbox waited past the rotation
    period (R28).

    ``row`` carries ``held`` (:data:`leadline_sync.mailbox.repository.SYNC_VIEW`).
    """
    if row.status_reason or row.status != MailboxStatus.ENABLED:
        return str(row.status_reason)
    since = row.last_synced_at or row.connected_at
    if (now - since).total_seconds() <= rotation_seconds:
        return ""
    period = (
        f"{rotation_seconds / 60:g} minutes"
        if rotation_seconds >= 60
        else f"{rotation_seconds:g} seconds"
    )
    if row.held:
        if row.last_synced_at is None:
            return f"the first sync has been running for more than {period}"
        return f"syncing a backlog; the last complete sync ended at {since:%Y-%m-%d %H:%M:%S} UTC"
    if row.last_synced_at is None:
        return (
            f"not synced yet: waiting more than {period} for a free sync connection "
            f"(connected at {since:%Y-%m-%d %H:%M:%S} UTC)"
        )
    return (
        f"not synced for more than {period}: waiting for a free sync connection "
        f"(last synced at {since:%Y-%m-%d %H:%M:%S} UTC)"
    )
