"""Recovery of what dead delivery processes left: their ``sending`` messages and their quota holds.

A process holds a PostgreSQL advisory lock for its life (delivery.repository); when the lock is
free, its ``sending`` rows are decided by their attempt's phase (``connecting``: queued again;
``data``: ``unknown``, R21) and its quota holds are settled with what reached the server under each.
Runs at start (before any claim) and every ``recovery_interval_seconds``, also measuring the queue's
depth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from leadline_kit.db import Database, asyncpg_dsn
from leadline_send.delivery import repository
from leadline_send.delivery.reservations import QuotaReservations
from leadline_send.metrics import QUEUE_DEPTH
from leadline_send.states import OPEN, MessageState

log = logging.getLogger("leadline.send.delivery")


class Recovery:
    def __init__(
        self,
        db: Database,
        connection: repository.Connection,
        instance_key: int,
        reservations: QuotaReservations,
        notify: Callable[[int], None],
        interval_seconds: float,
    ) -> None:
        self.db = db
        self._connection = connection
        self.instance_key = instance_key
        self.reservations = reservations
        self.notify = notify
        self.interval_seconds = interval_seconds

    async def once(self) -> int:
        # Liveness locks are probed on a connection of their own: on this process's lock connection
        # its own lock would be granted again (advisory locks are re-entrant within a session), and
        # its own messages in flight would look abandoned.
        probe = await asyncpg.connect(asyncpg_dsn(self.db.url))
        try:
            async with self.db.session() as session:
                recovered = await repository.recover_abandoned(session, probe)
            # the dead processes' quota reservations: what reached the server under each is counted,
            # the rest given back (once their messages above are decided: the next pass if not yet)
            async with self._connection() as conn:
                holds = await repository.abandoned_holds(conn, probe, self.instance_key)
        finally:
            await probe.close()
        self.reservations.settle_abandoned(holds)
        if recovered:
            log.warning(
                "recovered %d abandoned messages (%d unknown)",
                len(recovered),
                sum(r.state == MessageState.UNKNOWN for r in recovered),
            )
            self.notify(len(recovered))
        return len(recovered)

    async def run(self) -> None:
        while True:
            try:
                await self.once()
                await self._measure_queue()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recovery pass failed")
            await asyncio.sleep(self.interval_seconds)

    async def _measure_queue(self) -> None:
        async with self.db.session() as session:
            counts = await repository.open_counts(session)
        for state in OPEN:
            QUEUE_DEPTH.labels(state).set(counts.get(state, 0))
