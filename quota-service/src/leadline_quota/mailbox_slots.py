"""The company mailbox limit (R9): slots claimed by the sync service, pending mailboxes in FIFO.

A mailbox claims a slot when it connects.  While the company has fewer granted
slots than its ``mailbox_limit`` (``None`` = unlimited) the claim is granted;
otherwise the mailbox is *pending*, queued by claim order.  Whenever capacity
appears — the limit is raised (``company.updated``) or a slot is released
(RPC, or ``mailbox.disconnected``) — the oldest pending mailboxes are granted
and each grant enqueues ``quota.mailbox_slot_granted`` in the same transaction.

Every change holds the company row's lock (``INSERT ... ON CONFLICT DO
UPDATE``), so claims, releases and limit changes of one company are applied
one at a time, in any number of processes.  Lowering the limit revokes
nothing: granted mailboxes keep their slots and new claims wait.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.outbox import enqueue
from leadline_proto.events import MailboxSlotGrantedV1, MailboxSlotPayload
from leadline_quota.models import company, mailbox_slot, outbox
from leadline_quota.states import SlotState, move


@dataclass(frozen=True)
class SlotStatus:
    status: SlotState
    position: int | None = None  # 1 = next to be granted


async def lock_company(session: AsyncSession, company_id: uuid.UUID) -> int | None:
    """Create the company row if needed, hold its lock, and return its mailbox limit."""
    statement = insert(company).values(company_id=company_id)
    locking = statement.on_conflict_do_update(
        index_elements=[company.c.company_id],
        set_={"company_id": statement.excluded.company_id},
    ).returning(company.c.mailbox_limit)
    limit: int | None = (await session.execute(locking)).scalar_one()
    return limit


async def _granted_count(session: AsyncSession, company_id: uuid.UUID) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(mailbox_slot)
            .where(mailbox_slot.c.company_id == company_id, mailbox_slot.c.state == SlotState.GRANTED)
        )
        or 0
    )


async def _position(session: AsyncSession, company_id: uuid.UUID, seq: int) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(mailbox_slot)
            .where(
                mailbox_slot.c.company_id == company_id,
                mailbox_slot.c.state == SlotState.PENDING,
                mailbox_slot.c.seq <= seq,
            )
        )
        or 0
    )


async def grant_pending(
    session: AsyncSession, company_id: uuid.UUID, limit: int | None, now: datetime
) -> list[uuid.UUID]:
    """Grant the oldest pending mailboxes while there is room; the caller holds the company lock."""
    queue = (
        select(mailbox_slot.c.mailbox_id)
        .where(mailbox_slot.c.company_id == company_id, mailbox_slot.c.state == SlotState.PENDING)
        .order_by(mailbox_slot.c.seq)
    )
    if limit is not None:
        room = limit - await _granted_count(session, company_id)
        if room <= 0:
            return []
        queue = queue.limit(room)
    granted = list(
        (
            await session.execute(
                update(mailbox_slot)
                .where(mailbox_slot.c.company_id == company_id, mailbox_slot.c.mailbox_id.in_(queue.scalar_subquery()))
                .values(state=move(SlotState.PENDING, SlotState.GRANTED), granted_at=now)
                .returning(mailbox_slot.c.mailbox_id, mailbox_slot.c.seq)
            )
        ).all()
    )
    granted.sort(key=lambda row: row.seq)
    await enqueue(
        session,
        outbox,
        *(
            MailboxSlotGrantedV1(company_id=company_id, payload=MailboxSlotPayload(mailbox_id=row.mailbox_id))
            for row in granted
        ),
    )
    return [row.mailbox_id for row in granted]


async def claim(session: AsyncSession, company_id: uuid.UUID, mailbox_id: uuid.UUID, now: datetime) -> SlotStatus:
    """Claim a slot for a connecting mailbox; asking again answers the mailbox's current state."""
    limit = await lock_company(session, company_id)
    await grant_pending(session, company_id, limit, now)
    existing = (
        await session.execute(
            select(mailbox_slot.c.state, mailbox_slot.c.seq).where(
                mailbox_slot.c.company_id == company_id, mailbox_slot.c.mailbox_id == mailbox_id
            )
        )
    ).first()
    if existing is None:
        has_room = limit is None or await _granted_count(session, company_id) < limit
        state = SlotState.GRANTED if has_room else SlotState.PENDING
        seq = (
            await session.execute(
                insert(mailbox_slot)
                .values(
                    company_id=company_id,
                    mailbox_id=mailbox_id,
                    state=state,
                    requested_at=now,
                    granted_at=now if has_room else None,
                )
                .returning(mailbox_slot.c.seq)
            )
        ).scalar_one()
    else:
        state, seq = existing.state, existing.seq
    if state == SlotState.GRANTED:
        return SlotStatus(SlotState.GRANTED)
    return SlotStatus(SlotState.PENDING, await _position(session, company_id, seq))


async def release(
    session: AsyncSession,
    company_id: uuid.UUID,
    mailbox_id: uuid.UUID,
    now: datetime,
    *,
    claimed_before: datetime | None = None,
) -> list[uuid.UUID]:
    """Free the mailbox's slot (or leave the queue) and grant the oldest pending ones.

    ``claimed_before`` keeps a late ``mailbox.disconnected`` from freeing the slot of a newer
    connection of the same mailbox.  Returns the mailboxes granted as a result.
    """
    limit = await lock_company(session, company_id)
    condition = [mailbox_slot.c.company_id == company_id, mailbox_slot.c.mailbox_id == mailbox_id]
    if claimed_before is not None:
        condition.append(mailbox_slot.c.requested_at <= claimed_before)
    await session.execute(mailbox_slot.delete().where(*condition))
    return await grant_pending(session, company_id, limit, now)


async def set_mailbox_limit(
    session: AsyncSession, company_id: uuid.UUID, mailbox_limit: int | None, as_of: datetime, now: datetime
) -> list[uuid.UUID]:
    """Apply a company's mailbox limit (from ``company.updated``) unless a newer one is known."""
    await lock_company(session, company_id)
    await session.execute(
        update(company)
        .where(company.c.company_id == company_id, (company.c.limit_as_of.is_(None)) | (company.c.limit_as_of <= as_of))
        .values(mailbox_limit=mailbox_limit, limit_as_of=as_of, updated_at=now)
    )
    current = await session.scalar(select(company.c.mailbox_limit).where(company.c.company_id == company_id))
    return await grant_pending(session, company_id, current, now)


@dataclass(frozen=True)
class CompanySlots:
    mailbox_limit: int | None
    granted: int
    pending: int


async def company_slots(session: AsyncSession, company_id: uuid.UUID) -> CompanySlots:
    """The company's mailbox limit and how many mailboxes are granted and pending."""
    rows = (
        await session.execute(
            select(mailbox_slot.c.state, func.count())
            .where(mailbox_slot.c.company_id == company_id)
            .group_by(mailbox_slot.c.state)
        )
    ).all()
    counts = {str(state): int(n) for state, n in rows}
    limit = await session.scalar(select(company.c.mailbox_limit).where(company.c.company_id == company_id))
    return CompanySlots(limit, counts.get(SlotState.GRANTED, 0), counts.get(SlotState.PENDING, 0))
