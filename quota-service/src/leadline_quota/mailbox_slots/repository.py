"""Every query of the mailbox slots and the company's mailbox limit (``service.py`` decides)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_quota.models import company, mailbox_slot
from leadline_quota.states import SlotState, move


async def lock_company(session: AsyncSession, company_id: uuid.UUID) -> int | None:
    """Create the company row if needed, hold its lock, and return its mailbox limit."""
    statement = insert(company).values(company_id=company_id)
    locking = statement.on_conflict_do_update(
        index_elements=[company.c.company_id],
        set_={"company_id": statement.excluded.company_id},
    ).returning(company.c.mailbox_limit)
    limit: int | None = (await session.execute(locking)).scalar_one()
    return limit


async def granted_count(session: AsyncSession, company_id: uuid.UUID) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(mailbox_slot)
            .where(
                mailbox_slot.c.company_id == company_id, mailbox_slot.c.state == SlotState.GRANTED
            )
        )
        or 0
    )


async def position(session: AsyncSession, company_id: uuid.UUID, seq: int) -> int:
    """How many of the company's pending mailboxes were queued up to ``seq`` (1 = next to be
    granted)."""
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


async def grant_oldest_pending(
    session: AsyncSession, company_id: uuid.UUID, room: int | None, now: datetime
) -> list[Any]:
    """Grant up to ``room`` (None: all) of the company's oldest pending mailboxes; their
    (mailbox_id, seq)."""
    queue = (
        select(mailbox_slot.c.mailbox_id)
        .where(mailbox_slot.c.company_id == company_id, mailbox_slot.c.state == SlotState.PENDING)
        .order_by(mailbox_slot.c.seq)
    )
    if room is not None:
        queue = queue.limit(room)
    return list(
        (
            await session.execute(
                update(mailbox_slot)
                .where(
                    mailbox_slot.c.company_id == company_id,
                    mailbox_slot.c.mailbox_id.in_(queue.scalar_subquery()),
                )
                .values(state=move(SlotState.PENDING, SlotState.GRANTED), granted_at=now)
                .returning(mailbox_slot.c.mailbox_id, mailbox_slot.c.seq)
            )
        ).all()
    )


async def slot(session: AsyncSession, company_id: uuid.UUID, mailbox_id: uuid.UUID) -> Any:
    """The mailbox's slot (its state and queue seq), None when it has none."""
    return (
        await session.execute(
            select(mailbox_slot.c.state, mailbox_slot.c.seq).where(
                mailbox_slot.c.company_id == company_id, mailbox_slot.c.mailbox_id == mailbox_id
            )
        )
    ).first()


async def insert_slot(
    session: AsyncSession,
    company_id: uuid.UUID,
    mailbox_id: uuid.UUID,
    state: SlotState,
    now: datetime,
) -> int:
    """A new slot, granted at ``now`` or pending; its queue seq."""
    seq: int = (
        await session.execute(
            insert(mailbox_slot)
            .values(
                company_id=company_id,
                mailbox_id=mailbox_id,
                state=state,
                requested_at=now,
                granted_at=now if state == SlotState.GRANTED else None,
            )
            .returning(mailbox_slot.c.seq)
        )
    ).scalar_one()
    return seq


async def delete_slot(
    session: AsyncSession,
    company_id: uuid.UUID,
    mailbox_id: uuid.UUID,
    claimed_before: datetime | None,
) -> None:
    condition = [mailbox_slot.c.company_id == company_id, mailbox_slot.c.mailbox_id == mailbox_id]
    if claimed_before is not None:
        condition.append(mailbox_slot.c.requested_at <= claimed_before)
    await session.execute(mailbox_slot.delete().where(*condition))


async def set_limit_unless_newer(
    session: AsyncSession,
    company_id: uuid.UUID,
    mailbox_limit: int | None,
    as_of: datetime,
    now: datetime,
) -> None:
    await session.execute(
        update(company)
        .where(
            company.c.company_id == company_id,
            (company.c.limit_as_of.is_(None)) | (company.c.limit_as_of <= as_of),
        )
        .values(mailbox_limit=mailbox_limit, limit_as_of=as_of, updated_at=now)
    )


async def mailbox_limit(session: AsyncSession, company_id: uuid.UUID) -> int | None:
    limit: int | None = await session.scalar(
        select(company.c.mailbox_limit).where(company.c.company_id == company_id)
    )
    return limit


async def slot_counts(session: AsyncSession, company_id: uuid.UUID) -> dict[str, int]:
    """How many of the company's slots are in each state."""
    rows = (
        await session.execute(
            select(mailbox_slot.c.state, func.count())
            .where(mailbox_slot.c.company_id == company_id)
            .group_by(mailbox_slot.c.state)
        )
    ).all()
    return {str(state): int(n) for state, n in rows}
