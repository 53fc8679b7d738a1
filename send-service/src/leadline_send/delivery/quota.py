"""Asking the quota service (NATS request/reply) before each send (R14).

Reserve before the send, commit when the server accepted the message (or may
have: ``unknown`` counts, since the recipient may have it), release when it
surely did not.  No responder, a timeout or an unreadable answer is
:class:`QuotaUnavailable`: the message waits with backoff and is never sent
without a reservation.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from prometheus_client import Counter

from leadline_kit import rpc
from leadline_kit.backoff import Backoff
from leadline_proto.requests import (
    QuotaReserveReply,
    QuotaReserveRequest,
    QuotaSettleReply,
    QuotaSettleRequest,
)
from leadline_proto.subjects import (
    RPC_QUOTA_CHECK,
    RPC_QUOTA_COMMIT,
    RPC_QUOTA_RELEASE,
    RPC_QUOTA_RESERVE,
)

log = logging.getLogger("leadline.send.quota")

QUOTA_ANSWERS = Counter(
    "leadline_send_quota_answers_total", "Quota service answers", ["ask", "answer"]
)


class QuotaUnavailable(Exception):
    """The quota service did not answer."""


Settled = Callable[[], Awaitable[None]]

# How long the room a passing check reported answers the next checks of the account in this process.
ROOM_KEPT_SECONDS = 1.0
# a settle is tried until answered while this process lives (its holds go to recovery once it
# is gone): given up, it left a live process's reservation held and its mail uncounted (R14)
SETTLE_RETRY = Backoff(0.5, 8.0)
SETTLE_LOGGED_AFTER = 5  # unanswered tries before the wait is logged
UNLIMITED = 2**62


class QuotaClient:
    def __init__(self, nc: Client, timeout: float) -> None:
        self.nc = nc
        self.timeout = timeout
        self._settling: set[asyncio.Task[None]] = set()
        # (company, account) -> (until, messages left, recipients left) after the last passing check
        self._room: dict[tuple[uuid.UUID, str], tuple[float, int, int]] = {}

    async def _ask(self, subject: str, request: QuotaReserveRequest) -> QuotaReserveReply:
        try:
            reply = await rpc.ask(self.nc, subject, request, QuotaReserveReply, self.timeout)
        except rpc.Unanswered as exc:
            QUOTA_ANSWERS.labels(subject.rsplit(".", 1)[-1], "unavailable").inc()
            raise QuotaUnavailable(f"the quota service did not answer ({exc.reason})") from exc
        QUOTA_ANSWERS.labels(
            subject.rsplit(".", 1)[-1], "granted" if reply.granted else "refused"
        ).inc()
        return reply

    async def check(self, request: QuotaReserveRequest) -> QuotaReserveReply:
        """Would this pass now?  Answered from the room the last passing check reported while it
        lasts.

        The check is the API's early answer (a 429 before queueing); the reservation before sending
        is what enforces the limit, so an answer up to a second old is good enough, and saves the
        quota service a query for most messages of a busy account.
        """
        key = (request.company_id, request.account_key)
        kept = self._room.get(key)
        if kept is not None:
            until, messages, recipients = kept
            if (
                time.monotonic() < until
                and messages >= request.messages
                and recipients >= request.recipients
            ):
                self._room[key] = (
                    until,
                    messages - request.messages,
                    recipients - request.recipients,
                )
                QUOTA_ANSWERS.labels("check", "granted-from-room").inc()
                return QuotaReserveReply(granted=True)
            del self._room[key]
        reply = await self._ask(RPC_QUOTA_CHECK, request)
        if reply.granted:
            if len(self._room) > 10_000:
                now = time.monotonic()
                self._room = {k: v for k, v in self._room.items() if v[0] > now}
            self._room[key] = (
                time.monotonic() + ROOM_KEPT_SECONDS,
                UNLIMITED if reply.room_messages is None else reply.room_messages,
                UNLIMITED if reply.room_recipients is None else reply.room_recipients,
            )
        return reply

    async def reserve(self, request: QuotaReserveRequest) -> QuotaReserveReply:
        return await self._ask(RPC_QUOTA_RESERVE, request)

    def commit(
        self,
        company_id: uuid.UUID,
        reservation_id: uuid.UUID | None,
        *,
        messages: int | None = None,
        recipients: int | None = None,
        then: Settled | None = None,
    ) -> None:
        """Count the reservation; for a batch, only ``messages`` of it with ``recipients`` (the rest
        is freed).

        ``then`` runs once the quota service has answered (whatever it answered: asking again would
        not change it), e.g. to forget the hold that recovery would otherwise settle.
        """
        self._settle_later(RPC_QUOTA_COMMIT, company_id, reservation_id, messages, recipients, then)

    def release(
        self,
        company_id: uuid.UUID,
        reservation_id: uuid.UUID | None,
        *,
        then: Settled | None = None,
    ) -> None:
        self._settle_later(RPC_QUOTA_RELEASE, company_id, reservation_id, then=then)

    def _settle_later(
        self,
        subject: str,
        company_id: uuid.UUID,
        reservation_id: uuid.UUID | None,
        messages: int | None = None,
        recipients: int | None = None,
        then: Settled | None = None,
    ) -> None:
        # Settling is off the send path, and tried until the quota service answers (a late
        # commit still records the usage).  A settle that never arrives because this process is
        # killed leaves the reservation held: recovery settles the holds of a dead process.
        if reservation_id is None:
            return
        task = asyncio.create_task(
            self._settle(
                subject,
                QuotaSettleRequest(
                    company_id=company_id,
                    reservation_id=reservation_id,
                    messages=messages,
                    recipients=recipients,
                ),
                then,
            )
        )
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(
        self, subject: str, request: QuotaSettleRequest, then: Settled | None
    ) -> None:
        unanswered = 0
        while True:
            try:
                reply = await rpc.ask(self.nc, subject, request, QuotaSettleReply, self.timeout)
            except rpc.Unanswered as exc:
                unanswered += 1
                if unanswered == SETTLE_LOGGED_AFTER:
                    log.warning(
                        "quota %s of reservation %s unanswered %d times (%s); still trying",
                        subject,
                        request.reservation_id,
                        unanswered,
                        exc.reason,
                    )
                await asyncio.sleep(SETTLE_RETRY.seconds(unanswered - 1))
                continue
            if not reply.ok:
                log.warning(
                    "quota %s of %s refused: %s", subject, request.reservation_id, reply.detail
                )
            if then is not None:
                try:
                    await then()
                except Exception:
                    log.exception("after settling reservation %s", request.reservation_id)
            return

    async def drain(self) -> None:
        if self._settling:
            await asyncio.wait(self._settling, timeout=self.timeout * 2)
