"""Sharing mailboxes between replicas: leases in PostgreSQL; live mailboxes, and the rest in turns.

Each replica runs one scheduler.  It

1. renews the leases of the mailboxes it syncs (``lease_owner`` = this
   replica, ``lease_expires_at`` = now + ``sync_lease_seconds``) four times a
   lease period, stops the workers whose lease it no longer holds, and in the
   same transaction writes the ``last_synced_at`` its live workers handed
   over, and itself into ``sync.replica`` (alive, with its live capacity).
   This runs in a loop of its own, on a database connection of its own:
   when thousands of workers reconnect at once (the IMAP server restarted)
   their transactions queue for many seconds, and renewals queued
   behind them let every lease lapse, which stopped the workers and started
   the storm over;
2. every ``sync_schedule_interval`` seconds, tells the workers whose mailboxes
   have mail to examine again for a late lead (one query for all: an idle
   mailbox's passes ask nothing of the database), and claims due mailboxes
   that nobody holds, or whose holder's lease expired (a dead replica), with
   ``FOR UPDATE SKIP LOCKED`` so that two replicas never claim the same row,
   oldest last sync first.  The claiming transaction also reads what the
   workers' first sessions need (the rows, the folder cursors, whether
   ``lead_recheck`` rows wait): a mailbox taken over from a dead replica,
   its history complete, then goes live with no transaction of its own
   (thousands of them queued for the workers' few connections made a
   takeover last many seconds after the last login).  With room left, the
   next pass comes as soon as another replica's lease expires, not at the
   next interval:

   - ``live`` workers, up to the replica's capacity less its rotation slots
     (:mod:`.capacity`), and up to its share (:func:`fair_share`: the
     mailboxes to sync spread over the replicas alive in ``sync.replica``,
     in proportion to their live capacities): one connection each, held,
     waiting in IDLE; a live mailbox stays live, unless its replica holds
     more than its share (another replica came), and the orphans of a dead
     replica are taken by all the survivors at once, each its part;
   - ``rotating`` workers in the rotation slots: one pass each (connect, sync
     both folders, disconnect), then the slot takes the next mailbox whose
     last sync is oldest (and at least ``sync_poll_seconds`` old).  So when
     the replicas together hold fewer mailboxes than are enabled, the rest
     are served in turns and none starves; a mailbox waiting longer than
     ``sync_rotation_seconds`` says so (API, metrics: :mod:`.report`).

A separate loop repeats unanswered mailbox-limit claims and releases (R9),
so that a slow quota service never delays lease renewals; another refreshes
the metrics that describe every replica's mailboxes from the database.

A worker re-checks the lease in every transaction it commits (see
:meth:`MailboxSync._fence`), so a replica that lost its lease cannot write;
and a replica that cannot renew for most of a lease period stops its own
workers before another replica may take over, so that two replicas never
talk to one mailbox at once.  Lease times are the database's clock, shared by
all replicas; retry times are the service clock (injectable for tests).

The statements are in :mod:`leadline_sync.sync.repository`; this module holds their transactions
and the connections they run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import Row

from leadline_kit.db import Database
from leadline_sync.context import SyncContext
from leadline_sync.mailbox.slots import reconcile_slots
from leadline_sync.mailbox.states import SyncMode
from leadline_sync.sync import repository
from leadline_sync.sync.capacity import Capacity
from leadline_sync.sync.engine import Claimed, MailboxSync
from leadline_sync.sync.report import REPORT_SECONDS, report_mailboxes

log = logging.getLogger("leadline.sync.scheduler")

PASS_FLOOR = 0.5  # seconds between the starts of passes at least, however often they are woken
# a shutdown waits this long at most for the workers (their logouts take 3 s at most)
STOP_SECONDS = 5.0

HELD = Gauge("leadline_sync_mailboxes_held", "Mailboxes this replica syncs", ["replica"])
HELD_BY_MODE = Gauge(
    "leadline_sync_mailboxes_held_by_mode",
    "Mailboxes this replica syncs, live or rotating",
    ["replica", "sync_mode"],
)
RENEWAL_FAILURES = Counter(
    "leadline_sync_lease_renewal_failures_total", "Lease renewals of this replica that failed"
)
CAPACITY = Gauge(
    "leadline_sync_capacity",
    "Mailboxes this replica may hold, live or in rotation slots",
    ["replica", "sync_mode"],
)


def fair_share(total: int, capacity: int, alive_capacity: int) -> int:
    """Of ``total`` mailboxes, how many a replica of ``capacity`` holds live when the replicas alive
    can hold ``alive_capacity`` together (its own included): in proportion, rounded up, and all it
    can when they cannot hold every mailbox (the rest are served in turns)."""
    if total >= alive_capacity:
        return capacity
    return min(capacity, math.ceil(total * capacity / alive_capacity))


class SyncScheduler:
    def __init__(self, context: SyncContext, capacity: Capacity) -> None:
        self.context = context
        self.capacity = capacity
        self.settings = context.settings
        self.replica = context.replica
        self.workers: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.modes: dict[uuid.UUID, SyncMode] = {}
        self.syncs: dict[uuid.UUID, MailboxSync] = {}
        self.busy = asyncio.Semaphore(self.settings.sync_max_busy)
        self._renewed_at = time.monotonic()
        # seconds until another replica's lease on a due mailbox expires
        self._next_expiry: float | None = None
        self._task: asyncio.Task[Any] | None = None  # the one running run()
        # the workers' transactions queue for a few connections of their own, apart from the API's
        # pool: thousands of workers never need thousands of connections, nor time out waiting for
        # one
        self.db = Database(
            self.settings.database_url,
            "sync",
            self.settings.sync_db_connections,
            self.settings.sync_db_wait_seconds,
            queued=True,
        )
        # the renewals' own connection: never queued behind the workers' transactions
        self.leases = Database(self.settings.database_url, "sync", pool_size=1)

    @property
    def mailboxes(self) -> set[uuid.UUID]:
        """The mailboxes this replica is syncing right now."""
        return {mailbox_id for mailbox_id, task in self.workers.items() if not task.done()}

    def held(self, mode: SyncMode) -> set[uuid.UUID]:
        return {mailbox_id for mailbox_id in self.mailboxes if self.modes[mailbox_id] == mode}

    def _lease_interval(self) -> timedelta:
        return timedelta(seconds=self.settings.sync_lease_seconds)

    def _renewal_seconds(self) -> float:
        """A renewal writes every held mailbox's row: four a lease period are enough to keep it, and
        leave three tries before the workers stop (at 70 % of the lease)."""
        return max(self.settings.sync_schedule_interval, self.settings.sync_lease_seconds / 4)

    async def run(self) -> None:
        self._task = asyncio.current_task()
        CAPACITY.labels(self.replica, SyncMode.LIVE).set(self.capacity.live)
        CAPACITY.labels(self.replica, SyncMode.ROTATING).set(self.capacity.rotation_slots)
        interval = self.settings.sync_schedule_interval
        slots = asyncio.create_task(
            self._repeat(
                reconcile_slots,
                max(interval, self.settings.rpc_timeout_seconds),
                "mailbox-limit reconciliation",
            ),
            name="sync-slot-reconciler",
        )
        reports = asyncio.create_task(
            self._repeat(report_mailboxes, max(interval, REPORT_SECONDS), "mailbox report"),
            name="sync-mailbox-report",
        )
        renewals = asyncio.create_task(self._keep_leases(), name="sync-lease-renewal")
        try:
            # registered before the first claim: the others' shares count this replica
            await self._renew_or_stop()
            loop = asyncio.get_running_loop()
            while True:
                # cleared before the pass, not after: a mailbox connected while the pass runs wakes
                # the next
                self.context.wake.clear()
                started = loop.time()
                try:
                    await self.tick()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("scheduler pass failed")
                # the next pass at the interval, or as soon as a lease another replica let lapse
                # expires, or when woken (a mailbox connected, a rotation pass ended), but not
                # before the floor
                wait = interval if self._next_expiry is None else min(interval, self._next_expiry)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.context.wake.wait(), wait)
                await asyncio.sleep(max(0.0, started + min(PASS_FLOOR, interval) - loop.time()))
        finally:
            renewals.cancel()
            slots.cancel()
            reports.cancel()
            await asyncio.gather(renewals, slots, reports, return_exceptions=True)
            await self._stop_workers()
            self.context.parser.close()
            with contextlib.suppress(Exception):
                await self.release_all()
            await self.leases.dispose()
            await self.db.dispose()

    async def _keep_leases(self) -> None:
        while True:  # (the first renewal is the scheduler's, before its first pass)
            await asyncio.sleep(self._renewal_seconds())
            await self._renew_or_stop()

    async def _renew_or_stop(self) -> None:
        try:
            await self._renew()
        except asyncio.CancelledError:
            raise
        except Exception:
            RENEWAL_FAILURES.inc()
            log.exception("renewing the leases failed")
            if time.monotonic() - self._renewed_at > 0.7 * self.settings.sync_lease_seconds:
                # our leases may lapse: stop before another replica can start on them
                await self._stop_workers()

    async def tick(self) -> None:
        await self._reap()
        await self._claim()
        await self._note_rechecks()
        HELD.labels(self.replica).set(len(self.workers))
        for mode in SyncMode:
            HELD_BY_MODE.labels(self.replica, mode).set(
                sum(1 for m in self.modes.values() if m == mode)
            )

    async def _repeat(
        self, job: Callable[[SyncContext], Awaitable[None]], seconds: float, what: str
    ) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job(self.context)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; retrying", what)

    async def _reap(self) -> None:
        """Forget finished workers; give back the leases they left (one statement for all: a replica
        giving hundreds back above its share, or its rotation passes ending); a crashed one's
        mailbox waits ``sync_retry_base_seconds``."""
        finished = {mailbox_id: task for mailbox_id, task in self.workers.items() if task.done()}
        if not finished:
            return
        crashed: set[uuid.UUID] = set()
        for mailbox_id, task in finished.items():
            del self.workers[mailbox_id]
            del self.modes[mailbox_id]
            del self.syncs[mailbox_id]
            if not task.cancelled() and task.exception() is not None:
                log.error("mailbox %s: sync worker crashed", mailbox_id, exc_info=task.exception())
                crashed.add(mailbox_id)
        ended = [mailbox_id for mailbox_id in finished if mailbox_id not in crashed]
        retry_at = self.context.clock() + timedelta(seconds=self.settings.sync_retry_base_seconds)
        async with self.context.db.session() as session:
            for ids, retry in ((ended, None), (list(crashed), retry_at)):
                if ids:
                    await repository.give_back_leases(session, self.replica, ids, retry)

    async def _note_rechecks(self) -> None:
        """Tell the workers whose mailboxes have mail to examine again for a late lead
        (``lead_recheck``): one query for the replica, so that an idle mailbox asks nothing at its
        passes."""
        if not self.syncs:
            return
        async with self.context.db.session() as session:
            due = await repository.rechecks_waiting(session, list(self.syncs))
            for mailbox_id in due:
                sync = self.syncs.get(mailbox_id)
                if sync is not None:
                    sync.rechecks_due = True

    async def _renew(self) -> None:
        """Renew the leases of the held mailboxes, and write the live ones' ``last_synced_at`` that
        their workers handed over (:meth:`MailboxSync._note_synced`), both in one transaction."""
        held = list(self.workers)
        synced = {
            m: sync.synced_unwritten
            for m, sync in self.syncs.items()
            if sync.synced_unwritten is not None
        }
        kept: set[uuid.UUID] = set()
        async with self.leases.session() as session:
            # alive, and how many it may hold live: the others' shares count on it until a lease
            # period passes
            await repository.register_replica(session, self.replica, self.capacity.live)
            if held:
                kept = await repository.renew_leases(
                    session, self.replica, held, self._lease_interval()
                )
                # only rows whose lease this transaction just renewed (and locked): still ours,
                # still synced
                renewed = {m: at for m, at in synced.items() if m in kept}
                if renewed:
                    await repository.write_last_synced(session, renewed)
        for mailbox_id, at in synced.items():
            sync = self.syncs.get(mailbox_id)
            if sync is not None and sync.synced_unwritten == at:
                sync.synced_unwritten = None
        for mailbox_id in set(held) - kept:
            # (the scheduler's pass may have reaped it meanwhile)
            task = self.workers.get(mailbox_id)
            if task is not None:
                task.cancel()
        self._renewed_at = time.monotonic()

    async def _claim(self) -> None:
        live = [
            m
            for m, task in self.workers.items()
            if self.modes[m] == SyncMode.LIVE and not task.done()
        ]
        share, counted = await self._share()
        if len(live) > share + max(1, share // 50):
            # (a margin, so that shares rounded apart do not see-saw)
            self._give_back(live[share:])
            live = live[:share]
        room = self.capacity.live - len(live)
        claimed = await self._claim_for(SyncMode.LIVE, min(room, share - len(live)))
        # room left: look again the moment a lease of another replica expires (it may have died, and
        # its share grows ours), not at the next interval
        self._next_expiry = await self._next_foreign_expiry() if claimed < room else None
        rotating = sum(
            1
            for m, task in self.workers.items()
            if self.modes[m] == SyncMode.ROTATING and not task.done()
        )
        await self._claim_for(SyncMode.ROTATING, self.capacity.rotation_slots - rotating, counted)

    async def _share(self) -> tuple[int, int]:
        """How many mailboxes this replica should hold live: those to sync, spread over the replicas
        alive in proportion to their live capacities; and how many mailboxes to sync that share
        counted."""
        async with self.context.db.session() as session:
            total = await repository.mailboxes_to_sync(session)
            alive = await repository.alive_replicas(session, self._lease_interval())
        # (itself, whether its registration went through or not)
        alive[self.replica] = self.capacity.live
        return fair_share(total, self.capacity.live, sum(alive.values())), total

    def _give_back(self, mailbox_ids: list[uuid.UUID]) -> None:
        """Stop the workers of mailboxes beyond this replica's share; once they have stopped, the
        next pass gives their leases back (``_reap``) and a replica below its share claims them."""
        log.info(
            "replica %s holds %d mailbox(es) more than its share: giving them back",
            self.replica,
            len(mailbox_ids),
        )
        for mailbox_id in mailbox_ids:
            self.workers[mailbox_id].cancel()

    async def _next_foreign_expiry(self) -> float | None:
        """Seconds until the first lease another replica holds on a mailbox to sync expires."""
        async with self.context.db.session() as session:
            return await repository.next_foreign_expiry(session, self.replica)

    async def _claim_for(self, mode: SyncMode, free: int, counted: int | None = None) -> int:
        """Claim up to ``free`` due mailboxes and start their workers; how many.

        ``counted`` (rotating): the mailboxes to sync that this pass's share was counted from.  A
        mailbox connected since then is not in the share, and its first pass would be a rotating
        one, then a second login once the next pass claims it live: the claim takes none while there
        are more mailboxes to sync than were counted, in the same statement (one snapshot), and the
        next pass (woken by the connect) counts again."""
        if free <= 0:
            return 0
        now = self.context.clock()
        fresh = None
        if mode == SyncMode.ROTATING:
            # a pass per mailbox at most every poll period, however few mailboxes wait
            fresh = now - timedelta(seconds=self.settings.sync_poll_seconds)
        async with self.context.db.session() as session:
            rows = await repository.claim_due(
                session,
                self.replica,
                mode,
                free,
                now,
                self._lease_interval(),
                held=list(self.workers),
                fresh=fresh,
                counted=counted,
            )
            # what each worker's first session would read in transactions of its own, for all at
            # once
            ids = [row.id for row in rows]
            cursors: dict[uuid.UUID, list[Row[Any]]] = {}
            rechecks: set[uuid.UUID] = set()
            if ids:
                cursors = await repository.folder_cursors_of(session, ids)
                rechecks = await repository.rechecks_waiting(session, ids)
        for row in rows:
            claimed = Claimed(row, cursors[row.id], row.id in rechecks)
            worker = MailboxSync(self.context, row.id, self.busy, self.db, mode, claimed)
            task = asyncio.create_task(worker.run(), name=f"sync-mailbox-{row.id}")
            if mode == SyncMode.ROTATING:
                # its slot takes the next mailbox at once, not at the next interval
                task.add_done_callback(lambda _: self.context.wake.set())
            self.workers[row.id] = task
            self.modes[row.id] = mode
            self.syncs[row.id] = worker
        if rows and mode == SyncMode.LIVE:
            log.info("replica %s claimed %d mailbox(es)", self.replica, len(rows))
        return len(rows)

    async def stop(self) -> None:
        """A clean shutdown (SIGTERM): the workers stopped, their leases given back so that another
        replica takes over at once, the parser processes ended; in ``STOP_SECONDS`` and a little
        more.

        Called before the kit cancels the service's tasks: it cancels again every second, which
        would cut the release of the leases short behind a slow logout."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task], timeout=STOP_SECONDS + 5)

    async def _stop_workers(self) -> None:
        """Cancel every worker; wait ``STOP_SECONDS`` at most for their logouts (a worker still
        going after that can write nothing once its lease is given back:
        :meth:`MailboxSync._fence`)."""
        tasks = list(self.workers.values())
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_SECONDS)
            if pending:
                log.warning(
                    "%d sync worker(s) had not stopped after %g s", len(pending), STOP_SECONDS
                )

    async def release_all(self) -> None:
        """Give back every lease at a clean shutdown, so another replica takes over at once."""
        async with self.leases.session() as session:
            await repository.give_back_all(session, self.replica)
            # no longer alive: the others' shares grow at once
            await repository.unregister_replica(session, self.replica)
        self.workers.clear()
        self.modes.clear()
        self.syncs.clear()
