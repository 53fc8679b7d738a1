"""Delivery workers: claim queued messages, reserve quota, speak SMTP, settle (the queue:
delivery.repository).

One attempt, and the unit that owns each step::

    claim (commit)                                    Delivery.run_worker      (this module)
      → the account (cached), a quota lease           QuotaReservations        (delivery.reservations)
      → MAIL FROM, RCPT TO, DATA, the body            SmtpTransactions         (delivery.transaction)
          beside the record before the end of data    Settling.record          (delivery.settling, R21)
      → the end of data (".") once the record is on disk, a 10-minute reply timeout
      → the answer kept, settled with the next record Settling                 (delivery.settling)
          + mail.sent in the outbox, the quota committed, the Sent copy handed to its folder's appender
                                                      SentCopies               (delivery.sent_copy)
    a dead process's messages and quota holds         Recovery                 (delivery.recovery)

``Delivery`` is the process's side: its advisory lock (which tells recovery that it lives), the two
asyncpg pools, the wake-ups (``NOTIFY`` on delivery.repository.QUEUE_CHANNEL from every process, one
token per idle worker), the short cache of sending accounts, and the worker loop that composes the
units above.  What the server says decides the next state (delivery.outcome): a 4xx reply, or any
failure before the end of data, defers the message with backoff; 5xx fails it; silence after the end
of data makes it ``unknown``.
"""  # noqa: E501

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from asyncpg.pool import PoolAcquireContext

from leadline_kit.db import Database, asyncpg_dsn, json_codec, nothing_to_reset
from leadline_send.config import Settings
from leadline_send.credentials import CredentialKeys
from leadline_send.delivery import repository
from leadline_send.delivery.accounts import (
    MailboxDirectory,
    MailboxUnavailable,
    Route,
    Routes,
    SendingAccount,
    account_for_key,
)
from leadline_send.delivery.outcome import Backoff, Outcome
from leadline_send.delivery.quota import QuotaClient, QuotaUnavailable
from leadline_send.delivery.recovery import Recovery
from leadline_send.delivery.reservations import QuotaLease, QuotaReservations, Reserved, by_account
from leadline_send.delivery.sent_copy import SentCopies
from leadline_send.delivery.settling import Settling
from leadline_send.delivery.smtp import SmtpPolicy
from leadline_send.delivery.transaction import SmtpSession, SmtpTransactions, close_session
from leadline_send.messages.composition import Draft, build_message
from leadline_send.metrics import SMTP_SECONDS, timed
from leadline_send.states import REACHED_SERVER, MessageState, Reason

log = logging.getLogger("leadline.send.delivery")

ACCOUNT_CACHE_SECONDS = 5.0


@dataclass
class Worker:
    """What one delivery worker holds between messages (its unsettled answer is Settling's)."""

    number: int
    session: SmtpSession | None = None


@dataclass
class Delivery:
    """The delivery workers of one process and the recovery of abandoned messages."""

    db: Database
    settings: Settings
    quota: QuotaClient
    mailboxes: MailboxDirectory
    keys: CredentialKeys
    policy: SmtpPolicy
    routes: Routes
    # mail.sent is in the outbox: this process's relay (or the API's) publishes it
    wake_relay: Callable[[], None]
    # One token wakes one idle worker: waking all of them for each new message would have each run
    # an empty claim.  Workers also poll, for messages queued by other replicas or coming due.
    _wake: asyncio.Queue[None] = field(default_factory=lambda: asyncio.Queue(maxsize=64))
    instance_key: int = field(default_factory=lambda: random.randint(1, 2**31 - 1))  # noqa: S311
    _lock_conn: asyncpg.Connection | None = None
    _pool: asyncpg.Pool | None = None
    _durable_pool: asyncpg.Pool | None = None
    _accounts: dict[tuple[uuid.UUID, str], tuple[float, SendingAccount | None]] = field(
        default_factory=dict
    )
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _busy: set[int] = field(default_factory=set)
    _all_idle: asyncio.Event = field(default_factory=asyncio.Event)
    sent_copies: SentCopies = field(init=False)
    reservations: QuotaReservations = field(init=False)
    transactions: SmtpTransactions = field(init=False)
    settling: Settling = field(init=False)
    recovery: Recovery = field(init=False)
    backoff: Backoff = field(init=False)

    def __post_init__(self) -> None:
        self.backoff = backoff = Backoff.of(
            self.settings.retry_base_seconds, self.settings.retry_max_seconds
        )
        self.sent_copies = SentCopies(self.db, self.policy)
        self.reservations = QuotaReservations(
            self.quota, self.settings, self.instance_key, self._conn, backoff
        )
        self.transactions = SmtpTransactions(self.settings, self.policy, backoff)
        self.settling = Settling(
            self.settings,
            self.instance_key,
            self._durable_conn,
            self._conn,
            self.reservations,
            self.sent_copies,
            self.wake_relay,
            backoff,
        )
        self.recovery = Recovery(
            self.db,
            self._conn,
            self.instance_key,
            self.reservations,
            self.notify,
            self.settings.recovery_interval_seconds,
        )

    # --- the process ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take this process's advisory lock (it lasts as long as the process) and open the queue's
        pools."""
        self._lock_conn = await asyncpg.connect(asyncpg_dsn(self.db.url))
        await repository.take_liveness_lock(self._lock_conn, self.instance_key)
        if self.settings.smtp_connections:
            await self._lock_conn.add_listener(repository.QUEUE_CHANNEL, self._queued)
        # The durable pool commits synchronously (the record before the end of data), the other one
        # asynchronously (every other step): see delivery.settling.
        self._durable_pool, self._pool = [
            await asyncpg.create_pool(
                asyncpg_dsn(self.db.url),
                min_size=1,
                max_size=size,
                init=json_codec,
                reset=nothing_to_reset,
                server_settings={
                    "search_path": f"{self.db.schema},public",
                    "application_name": "send-delivery",
                    "synchronous_commit": commit,
                },
            )
            for size, commit in (
                (self.settings.smtp_connections + 1, "on"),
                (self.settings.smtp_connections + 2, "off"),
            )
        ]

    async def close(self) -> None:
        await self.quota.drain()  # settles in flight forget their holds through the pool
        for closable in (self._pool, self._durable_pool, self._lock_conn):
            if closable is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closable.close(), 5)

    async def stop(self, grace_seconds: float) -> None:
        """Finish the messages in hand (up to ``grace_seconds``), give back the claimed rest, then
        stop.

        What is still in hand after the grace period is cut off and recovered by the next process:
        a message not yet recorded is sent again, a recorded one becomes ``unknown``.
        """
        self.stopping.set()
        self.notify(len(self._busy))
        deadline = time.monotonic() + grace_seconds
        if self._busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_idle.wait(), grace_seconds)
        self.reservations.end_all()
        await self.sent_copies.close(max(0.0, deadline - time.monotonic()))

    def _conn(self) -> PoolAcquireContext:
        """A connection of the asynchronously committing pool (``async with``; see
        delivery.settling)."""
        assert self._pool is not None, "Delivery.start() first"
        return self._pool.acquire()

    def _durable_conn(self) -> PoolAcquireContext:
        assert self._durable_pool is not None, "Delivery.start() first"
        return self._durable_pool.acquire()

    async def recover_once(self) -> int:
        return await self.recovery.once()

    async def run_recovery(self) -> None:
        await self.recovery.run()

    def _queued(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.notify(min(int(payload) if payload.isdigit() else 1, self.settings.smtp_connections))

    def notify(self, messages: int = 1) -> None:
        """New work is queued: wake up to ``messages`` idle workers."""
        for _ in range(messages):
            if self._wake.full():
                return
            self._wake.put_nowait(None)

    # --- the worker loop --------------------------------------------------------------------------

    async def run_worker(self, number: int) -> None:
        worker = Worker(number)
        self._busy.add(number)
        self._all_idle.clear()
        try:
            while not self.stopping.is_set():
                try:
                    async with self._conn() as conn:
                        with timed("claim"):
                            batch = await repository.claim(
                                conn,
                                self.instance_key,
                                self.settings.claim_size,
                                worker.session.account_key if worker.session else None,
                            )
                except repository.DB_ERRORS:
                    log.exception("worker %d: claiming failed; retrying", number)
                    await asyncio.sleep(1.0)
                    continue
                if batch:
                    await self._deliver_batch(worker, batch)
                    continue
                await self._idle(worker)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.get(), self.settings.queue_poll_seconds)
        finally:
            await self._idle(worker)
            await close_session(worker.session)
            self._busy.discard(number)
            if not self._busy:
                self._all_idle.set()

    async def _idle(self, worker: Worker) -> None:
        """Nothing in hand: the last answer settled, expired leases ended, an idle session
        closed."""
        await self.settling.settle_pending(worker.number)
        self.reservations.end_idle()
        if worker.session is not None and worker.session.idle:
            await close_session(worker.session)
            worker.session = None

    async def _deliver_batch(self, worker: Worker, batch: list[repository.Claimed]) -> None:
        groups = by_account(batch)
        for g, group in enumerate(groups):
            lease = await self._lease(group)
            for n, message in enumerate(group):
                if self.stopping.is_set():
                    try:
                        async with self.db.session() as db_session:
                            await repository.give_back(
                                db_session,
                                [*group[n:], *(m for later in groups[g + 1 :] for m in later)],
                            )
                    finally:
                        if lease is not None:
                            for unsent in group[n:]:
                                self.reservations.release(lease, unsent, reached_server=False)
                    return
                await self._deliver_one(worker, message, lease)

    async def _lease(self, group: list[repository.Claimed]) -> QuotaLease | None:
        try:
            return await self.reservations.lease(group, await self._account(group[0]))
        except (QuotaUnavailable, MailboxUnavailable, *repository.DB_ERRORS):
            return None  # each message then reserves on its own, and learns why

    async def _deliver_one(
        self, worker: Worker, message: repository.Claimed, lease: QuotaLease | None
    ) -> None:
        """One message, and its lease told whether it reached the server.  (Cancelled, the lease is
        not settled: recovery counts what its rows say once this process is gone.)"""
        try:
            reached = await self.deliver(worker, message, lease)
        except Exception:
            log.exception("worker %d: delivering %s failed unexpectedly", worker.number, message.id)
            await self.settling.settle_pending(worker.number)
            await close_session(worker.session)
            worker.session = None
            reached = await self.settling.after_crash(message)
        if lease is not None:
            self.reservations.release(lease, message, reached)

    async def deliver(
        self, worker: Worker, message: repository.Claimed, lease: QuotaLease | None
    ) -> bool:
        """Send one message, under ``lease`` or with a reservation of its own; its answer is settled
        with the worker's next record, or alone (see delivery.settling).  Whether it reached the
        server (or may have: unknown counts, the recipient may have it)."""
        if message.category == "marketing" and await self._unsubscribed(message):
            await self.settling.finish(
                message,
                Outcome(
                    MessageState.FAILED,
                    Reason.UNSUBSCRIBED,
                    error="the recipient unsubscribed or complained after this message was queued",
                ),
            )
            return False
        if lease is not None:
            reserved = Reserved(lease.account, message, lease.reservation_id)
        else:
            found = await self._reserve(message)
            if isinstance(found, Outcome):
                await self.settling.finish(message, found)
                return False
            reserved = found
        message, account, reservation = reserved.message, reserved.account, reserved.reservation_id

        async def record() -> bool:
            return await self.settling.record(
                worker.number, message, reservation, leased=lease is not None
            )

        started = time.perf_counter()
        outcome, worker.session = await self.transactions.send(
            worker.session, message, account, record
        )
        SMTP_SECONDS.observe(time.perf_counter() - started)
        await self.settling.answered(
            worker.number, message, account, outcome, None if lease is not None else reservation
        )
        return outcome.state in REACHED_SERVER

    async def _reserve(self, message: repository.Claimed) -> Reserved | Outcome:
        try:
            return await self.reservations.reserve(
                message, await self._account(message), self._route, self._switch
            )
        except (QuotaUnavailable, MailboxUnavailable) as exc:
            return self.backoff.deferred(Reason.UNAVAILABLE, message.attempt, str(exc))

    async def _unsubscribed(self, message: repository.Claimed) -> bool:
        async with self._conn() as conn:
            return await repository.unsubscribed(conn, message.company_id, message.recipients)

    # --- sending accounts -------------------------------------------------------------------------

    async def _account(self, message: repository.Claimed) -> SendingAccount | None:
        # Kept a few seconds: looking the account up (and opening its password) for every message of
        # a batch would cost more than sending it; changes through the API drop the cache
        # (forget_accounts).
        cached = self._accounts.get((message.user_id, message.account_key))
        if cached and cached[0] > time.monotonic():
            return cached[1]
        async with self.db.session() as db_session:
            account = await account_for_key(
                db_session,
                self.keys,
                self.mailboxes,
                message.company_id,
                message.user_id,
                message.account_key,
            )
        self._accounts[(message.user_id, message.account_key)] = (
            time.monotonic() + ACCOUNT_CACHE_SECONDS,
            account,
        )
        return account

    def forget_accounts(self) -> None:
        self._accounts.clear()
        self.routes.forget()

    async def _route(self, message: repository.Claimed) -> Route:
        async with self.db.session() as db_session:
            return await self.routes.route(
                db_session, message.company_id, message.user_id, message.category
            )

    async def _switch(
        self, message: repository.Claimed, account: SendingAccount
    ) -> repository.Claimed:
        """Rotation (R15): the message rebuilt for another account of its type, and recorded so."""
        draft = Draft.from_json(message.draft)
        built = build_message(
            draft,
            account.sender,
            message_id=message.message_id,
            date=message.created_at,
            unsubscribe_link=message.draft.get("unsubscribe_link"),
        )
        async with self.db.session() as db_session:
            await repository.switch_account(
                db_session,
                message,
                account.key,
                built.envelope_from,
                built.raw,
                account.sender.from_email,
            )
        return repository.Claimed(
            **{
                **message.__dict__,
                "account_key": account.key,
                "raw": built.raw,
                "envelope_from": built.envelope_from,
                "size_bytes": len(built.raw),
            }
        )
