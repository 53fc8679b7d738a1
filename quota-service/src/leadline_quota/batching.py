"""Reservations of one account decided in batches: one lock and one commit for many asks.

Reservations of one sending account are serialised on its row lock, so a
busy account (a campaign on one company SMTP account) is bounded by the time
the lock is held, commit and its fsync included.  Within one process, asks
for an account that arrive while a transaction for that account is running
wait and are then decided together in the next transaction, one after the
other, each seeing the ones before it: the same decisions as one transaction
each, with one commit for the batch.  If the batch's transaction fails, every
ask of it fails (nothing of it is recorded) and is answered with an error.
"""

from __future__ import annotations

import asyncio

from leadline_kit.db import Database
from leadline_quota.clock import Clock
from leadline_quota.reservations import service as reservations
from leadline_quota.reservations.service import Decision, ReserveAsk

Pending = list[tuple[ReserveAsk, asyncio.Future[Decision]]]


class ReservationBatcher:
    def __init__(self, db: Database, clock: Clock, max_batch: int = 64) -> None:
        self.db = db
        self.clock = clock
        self.max_batch = max_batch
        self._waiting: dict[tuple[object, str], Pending] = {}
        self._deciding: set[tuple[object, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def reserve(self, ask: ReserveAsk) -> Decision:
        """Decide one ask (raises :class:`~leadline_quota.reservations.InvalidAsk` before
        queueing)."""
        ask = ask.validated()
        account = (ask.company_id, ask.account_key)
        decided: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(account, []).append((ask, decided))
        if account not in self._deciding:
            self._deciding.add(account)
            task = asyncio.create_task(self._decide_all(account))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await decided

    async def _decide_all(self, account: tuple[object, str]) -> None:
        try:
            while waiting := self._waiting.pop(account, None):
                batch, rest = waiting[: self.max_batch], waiting[self.max_batch :]
                if rest:
                    self._waiting[account] = rest
                await self._decide(batch)
        finally:
            self._deciding.discard(account)
            for _, decided in self._waiting.pop(account, []):  # left behind only when cancelled
                decided.cancel()

    async def _decide(self, batch: Pending) -> None:
        try:
            async with self.db.session() as session:
                decisions = [
                    await reservations.reserve(session, ask, self.clock) for ask, _ in batch
                ]
        except Exception as exc:
            for _, decided in batch:
                if not decided.done():
                    decided.set_exception(exc)
            return
        except BaseException:
            for _, decided in batch:
                decided.cancel()
            raise
        for (_, decided), decision in zip(batch, decisions, strict=True):
            if not decided.done():
                decided.set_result(decision)
