"""NATS request/reply responders of the quota service.

Each RPC subject is subscribed with the queue group ``quota``, so that every
running quota-service process shares the requests, and answered by
``kit.rpc.respond`` concurrently (bounded by ``responder_concurrency``); each
runs in its own database transaction and is answered only after it commits, so
a granted reply always stands for a committed reservation.  A request that
cannot be read gets the subject's reply type with ``detail`` saying why (never
silence, never a crashed responder); an unexpected failure is logged and
answered the same way (``OnFailure.REFUSE``), so the asker does not have to
wait for its timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from leadline_kit import rpc
from leadline_kit.db import Database
from leadline_proto.requests import (
    MailboxSlotReply,
    MailboxSlotRequest,
    MailboxSlotStatus,
    QuotaReserveReply,
    QuotaReserveRequest,
    QuotaSettleReply,
    QuotaSettleRequest,
    SyncAllowanceReply,
    SyncAllowanceRequest,
)
from leadline_proto.subjects import (
    RPC_MAILBOX_SLOT_CLAIM,
    RPC_MAILBOX_SLOT_RELEASE,
    RPC_QUOTA_CHECK,
    RPC_QUOTA_COMMIT,
    RPC_QUOTA_RELEASE,
    RPC_QUOTA_RESERVE,
    RPC_SYNC_ALLOWANCE,
)
from leadline_quota.batching import ReservationBatcher
from leadline_quota.clock import Clock
from leadline_quota.mailbox_slots import service as mailbox_slots
from leadline_quota.plans import service as plans
from leadline_quota.reservations import service as reservations
from leadline_quota.reservations.service import InvalidAsk, ReserveAsk

QUEUE_GROUP = "quota"


@dataclass
class QuotaRpc:
    db: Database
    clock: Clock
    batcher: ReservationBatcher

    def responders(self) -> list[rpc.Responder[Any]]:
        """One responder per subject, each refusing with its subject's reply type."""

        def reserve_refusal(why: str) -> BaseModel:
            return QuotaReserveReply(granted=False, detail=why)

        def settle_refusal(why: str) -> BaseModel:
            return QuotaSettleReply(ok=False, detail=why)

        def slot_refusal(why: str) -> BaseModel:
            return MailboxSlotReply(status=MailboxSlotStatus.INVALID, detail=why)

        def allowance_refusal(why: str) -> BaseModel:
            return SyncAllowanceReply(allowed=0, detail=why)

        refuse = rpc.OnFailure.REFUSE
        return [
            rpc.Responder(
                RPC_QUOTA_RESERVE, QuotaReserveRequest, self.reserve, reserve_refusal, refuse
            ),
            rpc.Responder(
                RPC_QUOTA_CHECK, QuotaReserveRequest, self.check, reserve_refusal, refuse
            ),
            rpc.Responder(
                RPC_QUOTA_COMMIT, QuotaSettleRequest, self.commit, settle_refusal, refuse
            ),
            rpc.Responder(
                RPC_QUOTA_RELEASE, QuotaSettleRequest, self.release, settle_refusal, refuse
            ),
            rpc.Responder(
                RPC_MAILBOX_SLOT_CLAIM, MailboxSlotRequest, self.claim_slot, slot_refusal, refuse
            ),
            rpc.Responder(
                RPC_MAILBOX_SLOT_RELEASE,
                MailboxSlotRequest,
                self.release_slot,
                slot_refusal,
                refuse,
            ),
            rpc.Responder(
                RPC_SYNC_ALLOWANCE,
                SyncAllowanceRequest,
                self.sync_allowance,
                allowance_refusal,
                refuse,
            ),
        ]

    async def _decide(
        self, request: QuotaReserveRequest, *, dry_run: bool
    ) -> tuple[BaseModel, str]:
        ask = ReserveAsk(
            request.company_id,
            request.account_key,
            request.provider,
            request.recipients,
            request.size_bytes,
            request.ttl_seconds,
            request.overrides,
            request.month_start_day,
            messages=request.messages,
            largest_recipients=request.largest_recipients,
            reservation_id=request.reservation_id,
        )
        try:
            if dry_run:
                async with self.db.session() as session:
                    decision = await reservations.reserve(session, ask, self.clock, dry_run=True)
            else:
                decision = await self.batcher.reserve(ask)
        except InvalidAsk as exc:
            raise rpc.Unreadable(str(exc)) from exc
        reply = QuotaReserveReply(
            granted=decision.granted,
            reservation_id=decision.reservation_id,
            limit=decision.limit,
            retry_at=decision.retry_at,
            detail=decision.detail,
            room_messages=decision.room_messages,
            room_recipients=decision.room_recipients,
        )
        return reply, "granted" if decision.granted else "refused"

    async def reserve(self, request: QuotaReserveRequest) -> tuple[BaseModel, str]:
        return await self._decide(request, dry_run=False)

    async def check(self, request: QuotaReserveRequest) -> tuple[BaseModel, str]:
        return await self._decide(request, dry_run=True)

    async def commit(self, request: QuotaSettleRequest) -> tuple[BaseModel, str]:
        async with self.db.session() as session:
            settled = await reservations.commit(
                session,
                request.company_id,
                request.reservation_id,
                self.clock,
                messages=request.messages,
                recipients=request.recipients,
            )
        if settled.invalid:
            raise rpc.Unreadable(settled.detail)
        return QuotaSettleReply(
            ok=settled.ok, detail=settled.detail
        ), "ok" if settled.ok else "not-ok"

    async def release(self, request: QuotaSettleRequest) -> tuple[BaseModel, str]:
        async with self.db.session() as session:
            settled = await reservations.release(
                session, request.company_id, request.reservation_id, self.clock, remember=True
            )
        return QuotaSettleReply(
            ok=settled.ok, detail=settled.detail
        ), "ok" if settled.ok else "not-ok"

    async def claim_slot(self, request: MailboxSlotRequest) -> tuple[BaseModel, str]:
        async with self.db.session() as session:
            slot = await mailbox_slots.claim(
                session, request.company_id, request.mailbox_id, self.clock()
            )
        return MailboxSlotReply(status=slot.status, position=slot.position), slot.status

    async def release_slot(self, request: MailboxSlotRequest) -> tuple[BaseModel, str]:
        async with self.db.session() as session:
            await mailbox_slots.release(
                session, request.company_id, request.mailbox_id, self.clock()
            )
        return MailboxSlotReply(status=MailboxSlotStatus.RELEASED), "released"

    async def sync_allowance(self, request: SyncAllowanceRequest) -> tuple[BaseModel, str]:
        if request.count < 0:
            raise rpc.Unreadable("count must not be negative")
        async with self.db.session() as session:
            allowance = await plans.sync_allowance(
                session, request.company_id, request.user_id, request.count, self.clock()
            )
        outcome = "allowed" if allowance.allowed == request.count else "limited"
        return SyncAllowanceReply(allowed=allowance.allowed, resets_at=allowance.resets_at), outcome
