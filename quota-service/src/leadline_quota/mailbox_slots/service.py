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

from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.outbox import enqueue
from leadline_proto.events import MailboxSlotGrantedV1, MailboxSlotPayload
from leadline_quota.mailbox_slots import repository
from leadline_quota.models import outbox
from leadline_quota.states import SlotState


@dataclass(frozen=True)
class SlotStatus:
    status: SlotState
    position: int | None = None  # 1 = next to be granted


async def grant_pending(
    session: AsyncSession, company_id: uuid.UUID, limit: int | None, now: datetime
) -> list[uuid.UUID]:
    """Grant the oldest pending mailboxes while there is room; the caller holds the company lock."""
    room = None
    if limit is not None:
        room = limit - await repository.granted_count(session, company_id)
        if room <= 0:
            return []
    granted = await repository.grant_oldest_pending(session, company_id, room, now)
    granted.sort(key=lambda row: row.seq)
    await enqueue(
        session,
        outbox,
        *(
            MailboxSlotGrantedV1(
                company_id=company_id, payload=MailboxSlotPayload(mailbox_id=row.mailbox_id)
            )
            for row in granted
        ),
    )
    return [row.mailbox_id for row in granted]


async def claim(
    session: AsyncSession, company_id: uuid.UUID, mailbox_id: uuid.UUID, now: datetime
) -> SlotStatus:
    """Claim a slot for a connecting mailbox; asking again answers the mailbox's current state."""
    limit = await repository.lock_company(session, company_id)
    await grant_pending(session, company_id, limit, now)
    existing = await repository.slot(session, company_id, mailbox_id)
    if existing is None:
        has_room = limit is None or await repository.granted_count(session, company_id) < limit
        state = SlotState.GRANTED if has_room else SlotState.PENDING
        seq = await repository.insert_slot(session, company_id, mailbox_id, state, now)
    else:
        state, seq = existing.state, existing.seq
    if state == SlotState.GRANTED:
        return SlotStatus(SlotState.GRANTED)
    return SlotStatus(SlotState.PENDING, await repository.position(session, company_id, seq))


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
    limit = await repository.lock_company(session, company_id)
    await repository.delete_slot(session, company_id, mailbox_id, claimed_before)
    return await grant_pending(session, company_id, limit, now)


async def set_mailbox_limit(
    session: AsyncSession,
    company_id: uuid.UUID,
    mailbox_limit: int | None,
    as_of: datetime,
    now: datetime,
) -> list[uuid.UUID]:
    """Apply a company's mailbox limit (from ``company.updated``) unless a newer one is known."""
    await repository.lock_company(session, company_id)
    await repository.set_limit_unless_newer(session, company_id, mailbox_limit, as_of, now)
    current = await repository.mailbox_limit(session, company_id)
    return await grant_pending(session, company_id, current, now)


@dataclass(frozen=True)
class CompanySlots:
    mailbox_limit: int | None
    granted: int
    pending: int


async def company_slots(session: AsyncSession, company_id: uuid.UUID) -> CompanySlots:
    """The company's mailbox limit and how many mailboxes are granted and pending."""
    counts = await repository.slot_counts(session, company_id)
    limit = await repository.mailbox_limit(session, company_id)
    return CompanySlots(limit, counts.get(SlotState.GRANTED, 0), counts.get(SlotState.PENDING, 0))
