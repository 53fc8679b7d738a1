"""NATS request/reply responders of the quota service.

Each RPC subject is subscribed with the queue group ``quota``, so that every
running quota-service process shares the requests.  Requests are answered
concurrently (bounded by ``responder_concurrency``); each runs in its own
database transaction and is answered only after it commits, so a granted
reply always stands for a committed reservation.  A request that cannot be
read gets the subject's reply type with ``detail`` saying why (never silence,
never a crashed responder); an unexpected failure is logged and answered the
same way, so the asker does not have to wait for its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError

from leadline_kit.db import Database
from leadline_proto.requests import (
    MailboxSlotReply,
    MailboxSlotRequest,
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
from leadline_quota import mailbox_slots, plans, reservations
from leadline_quota.batching import ReservationBatcher
from leadline_quota.clock import Clock
from leadline_quota.reservations import InvalidAsk, ReserveAsk

log = logging.getLogger("leadline.quota.rpc")

QUEUE_GROUP = "quota"
ANSWERS = Counter("leadline_quota_rpc_total", "Quota RPC answers", ["subject", "outcome"])
LATENCY = Histogram(
    "leadline_quota_rpc_seconds",
    "Quota RPC handling time",
    ["subject"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

Answer = Callable[[bytes], Awaitable[tuple[BaseModel, str]]]


class Unreadable(Exception):
    """The request cannot be answered as asked; the message is the reply's detail."""


def _why(exc: ValidationError) -> str:
    return "invalid request: " + "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)[:5]
    )


@dataclass
class QuotaRpc:
    db: Database
    clock: Clock
    batcher: ReservationBatcher

    def answers(self) -> dict[str, tuple[Answer, Callable[[str], BaseModel]]]:
        """Subject → (answer, the reply to send when the request cannot be answered)."""
        return {
            RPC_QUOTA_RESERVE: (self.reserve, lambda why: QuotaReserveReply(granted=False, detail=why)),
            RPC_QUOTA_CHECK: (self.check, lambda why: QuotaReserveReply(granted=False, detail=why)),
            RPC_QUOTA_COMMIT: (self.commit, lambda why: QuotaSettleReply(ok=False, detail=why)),
            RPC_QUOTA_RELEASE: (self.release, lambda why: QuotaSettleReply(ok=False, detail=why)),
            RPC_MAILBOX_SLOT_CLAIM: (self.claim_slot, lambda why: MailboxSlotReply(status="invalid", detail=why)),
            RPC_MAILBOX_SLOT_RELEASE: (self.release_slot, lambda why: MailboxSlotReply(status="invalid", detail=why)),
            RPC_SYNC_ALLOWANCE: (self.sync_allowance, lambda why: SyncAllowanceReply(allowed=0, detail=why)),
        }

    async def _decide(self, data: bytes, *, dry_run: bool) -> tuple[BaseModel, str]:
        request = QuotaReserveRequest.model_validate_json(data)
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
            raise Unreadable(str(exc)) from exc
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

    async def reserve(self, data: bytes) -> tuple[BaseModel, str]:
        return await self._decide(data, dry_run=False)

    async def check(self, data: bytes) -> tuple[BaseModel, str]:
        return await self._decide(data, dry_run=True)

    async def commit(self, data: bytes) -> tuple[BaseModel, str]:
        request = QuotaSettleRequest.model_validate_json(data)
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
            raise Unreadable(settled.detail)
        return QuotaSettleReply(ok=settled.ok, detail=settled.detail), "ok" if settled.ok else "not-ok"

    async def release(self, data: bytes) -> tuple[BaseModel, str]:
        request = QuotaSettleRequest.model_validate_json(data)
        async with self.db.session() as session:
            settled = await reservations.release(session, request.company_id, request.reservation_id, self.clock)
        return QuotaSettleReply(ok=settled.ok, detail=settled.detail), "ok" if settled.ok else "not-ok"

    async def claim_slot(self, data: bytes) -> tuple[BaseModel, str]:
        request = MailboxSlotRequest.model_validate_json(data)
        async with self.db.session() as session:
            slot = await mailbox_slots.claim(session, request.company_id, request.mailbox_id, self.clock())
        return MailboxSlotReply(status=slot.status, position=slot.position), slot.status

    async def release_slot(self, data: bytes) -> tuple[BaseModel, str]:
        request = MailboxSlotRequest.model_validate_json(data)
        async with self.db.session() as session:
            await mailbox_slots.release(session, request.company_id, request.mailbox_id, self.clock())
        return MailboxSlotReply(status="released"), "released"

    async def sync_allowance(self, data: bytes) -> tuple[BaseModel, str]:
        request = SyncAllowanceRequest.model_validate_json(data)
        if request.count < 0:
            raise Unreadable("count must not be negative")
        async with self.db.session() as session:
            allowance = await plans.sync_allowance(
                session, request.company_id, request.user_id, request.count, self.clock()
            )
        outcome = "allowed" if allowance.allowed == request.count else "limited"
        return SyncAllowanceReply(allowed=allowance.allowed, resets_at=allowance.resets_at), outcome


async def subscribe(nc: Client, subject: str) -> Subscription:
    """Join the ``quota`` queue group on ``subject``; flushed, so requests reach it from now on."""
    subscription = await nc.subscribe(subject, queue=QUEUE_GROUP)
    await nc.flush()
    return subscription


async def respond(
    subscription: Subscription, answer: Answer, unanswerable: Callable[[str], BaseModel], concurrency: int
) -> None:
    """Answer the subscription's requests until cancelled, at most ``concurrency`` at a time."""
    subject = subscription.subject
    slots = asyncio.Semaphore(concurrency)
    in_flight: set[asyncio.Task[None]] = set()

    async def answer_one(msg: Msg) -> None:
        started = time.perf_counter()
        try:
            try:
                reply, outcome = await answer(msg.data)
            except ValidationError as exc:
                reply, outcome = unanswerable(_why(exc)), "invalid"
            except Unreadable as exc:
                reply, outcome = unanswerable(f"invalid request: {exc}"), "invalid"
            except Exception:
                log.exception("quota rpc %s failed", subject)
                reply, outcome = unanswerable("the quota service failed to answer; retry later"), "error"
            if msg.reply:
                await msg.respond(reply.model_dump_json().encode())
            ANSWERS.labels(subject, outcome).inc()
            LATENCY.labels(subject).observe(time.perf_counter() - started)
        except Exception:
            log.exception("quota rpc %s: could not send the reply", subject)
        finally:
            slots.release()

    try:
        async for msg in subscription.messages:
            await slots.acquire()
            task = asyncio.create_task(answer_one(msg))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
    finally:
        await asyncio.gather(*in_flight, return_exceptions=True)
        with contextlib.suppress(Exception):  # the connection may already be closing
            await subscription.unsubscribe()
