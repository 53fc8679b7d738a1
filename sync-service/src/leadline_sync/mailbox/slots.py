"""The company mailbox limit (R9), asked of the quota service over NATS request/reply.

A claim answers ``granted`` or ``pending``; a pending mailbox is enabled later
by ``quota.mailbox_slot_granted``.  When nobody answers (quota service down
or slow) the mailbox shows ``error`` with a clear message and stays
``unclaimed``; the scheduler asks again.  Releases are retried the same way
until the quota service confirms.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from leadline_kit import rpc
from leadline_proto.requests import MailboxSlotReply, MailboxSlotRequest, MailboxSlotStatus
from leadline_proto.subjects import RPC_MAILBOX_SLOT_CLAIM, RPC_MAILBOX_SLOT_RELEASE
from leadline_sync.context import SyncContext
from leadline_sync.mailbox import repository
from leadline_sync.mailbox.service import SlotAnswer, apply_slot_answer, move_slot
from leadline_sync.mailbox.states import Slot

log = logging.getLogger("leadline.sync.slots")

UNANSWERED = {
    rpc.Unheard.NO_RESPONDERS: "the mailbox limit service is not running",
    rpc.Unheard.TIMEOUT: "the mailbox limit service did not answer in time",
    rpc.Unheard.MALFORMED: "the mailbox limit service gave an unreadable answer",
}


async def ask_quota_service(
    context: SyncContext, subject: str, company_id: uuid.UUID, mailbox_id: uuid.UUID
) -> SlotAnswer:
    request = MailboxSlotRequest(company_id=company_id, mailbox_id=mailbox_id)
    try:
        reply = await rpc.ask(
            context.nc, subject, request, MailboxSlotReply, context.settings.rpc_timeout_seconds
        )
    except rpc.Unanswered as exc:
        return SlotAnswer(None, detail=UNANSWERED[exc.reason])
    return SlotAnswer(reply.status, reply.position, reply.detail)


async def claim_slot(context: SyncContext, company_id: uuid.UUID, mailbox_id: uuid.UUID) -> None:
    answer = await ask_quota_service(context, RPC_MAILBOX_SLOT_CLAIM, company_id, mailbox_id)
    if answer.status == MailboxSlotStatus.INVALID:
        log.error(
            "quota service refused the slot claim of mailbox %s: %s", mailbox_id, answer.detail
        )
    async with context.db.session() as session:
        await apply_slot_answer(session, mailbox_id, answer, context.clock())


async def release_slot(context: SyncContext, company_id: uuid.UUID, mailbox_id: uuid.UUID) -> bool:
    """Give the slot back; True once the quota service has heard it."""
    answer = await ask_quota_service(context, RPC_MAILBOX_SLOT_RELEASE, company_id, mailbox_id)
    if answer.status is None:
        log.warning(
            "slot release of mailbox %s not confirmed (%s); will retry", mailbox_id, answer.detail
        )
        return False
    if answer.status == MailboxSlotStatus.INVALID:
        log.error(
            "quota service refused the slot release of mailbox %s: %s", mailbox_id, answer.detail
        )
    async with context.db.session() as session:
        await move_slot(session, mailbox_id, Slot.RELEASING, Slot.RELEASED)
    return True


async def reconcile_slots(context: SyncContext, limit: int = 50) -> None:
    """Ask again for slots nobody answered, and repeat unconfirmed releases."""
    async with context.db.session() as session:
        rows = await repository.slots_to_reconcile(session, limit)
    for row in rows:
        if row.slot == Slot.RELEASING:
            await release_slot(context, row.company_id, row.id)
        else:
            await claim_slot(context, row.company_id, row.id)
        await asyncio.sleep(0)
