"""Delivery workers: claim queued messages, reserve quota, speak SMTP, settle (see delivery.queue).

Each worker owns at most one SMTP session and keeps it open across messages of
the same account, opening a new one once ``recipients_per_connection``
recipients went over it (R14).  The order of one attempt::

    claim (commit) → account → quota reserve → session
      → MAIL FROM, RCPT TO, DATA, the body  beside  phase "data" (commit, R21)
      → the end of data (".") once the record is on disk, a 10-minute reply timeout
      → settle + mail.sent in the outbox (commit) → quota commit → Sent copy (handed to the folder's
        appender, delivery.sent_copy, which appends beside the next transactions)

The envelope is one write when the server offers PIPELINING (smtp.SmtpChannel).
The server holds a message only from its end-of-data mark on; a connection
closed before it cancels the transaction (RFC 5321 §3.8), so that mark is R21's
gate and everything before it may go out while the record is written.

Under a lease (the usual case) the settle of the last line is written in one
durable statement with the next message's record, while the worker speaks that
message's envelope (queue.SETTLE_SENT_THEN_RECORD); otherwise, and when no
message follows, it is written alone.  A worker so has at most one message
recorded and not settled, and neither round trip adds to a message's time
unless it outlasts the envelope and the body.  The price: a process killed
before a message's end of data leaves it ``unknown`` although the server
dropped it (it was recorded, R21 forbids guessing).  A kill leaves at most one
``unknown`` per worker, and nothing is sent twice.

A worker claims up to ``claim_size`` messages at once and reserves quota for
``claim_size`` messages of one account in one ask (``messages=k``, all or
nothing): a lease that also serves the worker's next claims of that account for
up to ``quota_lease_seconds``.  The reservation is named on the rows it covers;
when the lease ends (used up, expired, another account, the queue empty) only
the messages that reached the server (sent or unknown) are committed and the
rest is given back.  If the lease does not fit, each message reserves on its
own, with rotation to the next account of its type (R15), so an account near
its limit sends exactly its allowance.  A process that dies mid-lease leaves
the reservation named on its rows, and recovery commits what was used.  The
claim, the record before the end of data and the settle run on a pool of plain asyncpg
connections: through SQLAlchemy they cost more CPU than SMTP itself.  New
messages wake the workers of every process by ``NOTIFY`` (queue.QUEUE_CHANNEL).

What the server says decides the next state: a reply of class 4xx, or any
failure before the end of data, puts the message back (``deferred``, backoff
with jitter); 5xx fails it with the server's words; silence after the end of
data makes it ``unknown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiosmtplib
import asyncpg
from asyncpg.pool import PoolAcquireContext
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from leadline_kit.db import Database, asyncpg_dsn, json_text, json_value
from leadline_mail.net import MailConnectionError
from leadline_proto.events import Attachment, MailSentPayload, MailSentV1
from leadline_proto.requests import QuotaReserveReply, QuotaReserveRequest
from leadline_send.config import Settings
from leadline_send.credentials import CredentialKeys
from leadline_send.delivery import queue
from leadline_send.delivery.accounts import (
    MailboxDirectory,
    MailboxUnavailable,
    Routes,
    SendingAccount,
    account_for_key,
)
from leadline_send.delivery.quota import QuotaClient, QuotaUnavailable, Settled
from leadline_send.delivery.sent_copy import SentCopies
from leadline_send.delivery.smtp import Envelope, Reply, SmtpChannel, SmtpPolicy, open_channel
from leadline_send.messages.composition import Draft, build_message
from leadline_send.metrics import (
    DELIVERY_SECONDS,
    OUTCOMES,
    QUEUE_DEPTH,
    RETRIES,
    SMTP_REPLIES,
    SMTP_SECONDS,
    timed,
)
from leadline_send.models import OPEN_STATES, outgoing_message, unsubscribe

log = logging.getLogger("leadline.send.delivery")

ACCOUNT_CACHE_SECONDS = 5.0
SESSION_IDLE_SECONDS = 30.0


@dataclass
class SmtpSession:
    """One open SMTP session of a worker."""

    account_key: str
    channel: SmtpChannel
    recipients: int = 0
    last_used: float = field(default_factory=time.monotonic)

    @property
    def idle(self) -> bool:
        # servers drop idle sessions after a few minutes (RFC 5321 asks for 5); a fresh one is cheaper
        # than a failed MAIL FROM that would cost the message a retry
        return time.monotonic() - self.last_used > SESSION_IDLE_SECONDS


@dataclass
class Outcome:
    state: str
    outcome: str
    reply: str | None = None
    error: str | None = None
    retry_at: datetime | None = None


def _reply_class(code: int) -> str:
    return f"{code // 100}xx"


def _unknown(what: str) -> Outcome:
    """After the end of data, without a reply that decides: R21 forbids guessing."""
    return Outcome(
        "unknown",
        "no-reply",
        error=f"{what}; the server may hold it. It is not resent by itself: "
        "it turns sent when it appears in the Sent folder, or resend it on purpose",
    )


DB_ERRORS = (OSError, SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass
class HeldReservation:
    """A worker's quota reservation for up to ``quota_lease_messages`` messages of one account (a lease).

    It covers the messages claimed with it and, for a short while, later claims of the same
    account's messages, as long as they fit in what was reserved: messages trickling in one by one
    are not each a round trip to the quota service.  ``used`` is what reached the server (or may
    have); only that is committed, the rest is given back.
    """

    account: SendingAccount
    group: tuple[uuid.UUID, uuid.UUID, str]  # company, sender, account key
    reservation_id: uuid.UUID
    messages: int  # reserved
    recipients: int
    largest_recipients: int
    largest_bytes: int
    expires: float  # monotonic; settled by then, well before the quota service's TTL
    taken_messages: int = 0
    taken_recipients: int = 0
    used_messages: int = 0
    used_recipients: int = 0

    @property
    def company_id(self) -> uuid.UUID:
        return self.group[0]

    def covers(self, messages: list[queue.Claimed]) -> bool:
        return (
            _group_key(messages[0]) == self.group
            and time.monotonic() < self.expires
            and self.taken_messages + len(messages) <= self.messages
            and self.taken_recipients + sum(len(m.recipients) for m in messages) <= self.recipients
            and all(
                len(m.recipients) <= self.largest_recipients and m.size_bytes <= self.largest_bytes for m in messages
            )
        )

    def take(self, messages: list[queue.Claimed]) -> None:
        self.taken_messages += len(messages)
        self.taken_recipients += sum(len(m.recipients) for m in messages)

    @property
    def exhausted(self) -> bool:
        return self.taken_messages >= self.messages or time.monotonic() >= self.expires

    def use(self, message: queue.Claimed) -> None:
        self.used_messages += 1
        self.used_recipients += len(message.recipients)


@dataclass(frozen=True)
class Answered:
    """A message the server answered (or did not), its settle not yet written."""

    settlement: queue.Settlement
    account: SendingAccount
    own_reservation: uuid.UUID | None  # not under a lease: committed or given back after the settle


@dataclass
class Worker:
    """What one delivery worker holds between messages."""

    number: int
    session: SmtpSession | None = None
    lease: HeldReservation | None = None
    answered: Answered | None = None  # settled with the next message's record, or alone (Delivery._settled)


def _group_key(message: queue.Claimed) -> tuple[uuid.UUID, uuid.UUID, str]:
    return message.company_id, message.user_id, message.account_key


def _by_account(batch: list[queue.Claimed]) -> list[list[queue.Claimed]]:
    groups: dict[tuple[uuid.UUID, uuid.UUID, str], list[queue.Claimed]] = {}
    for message in batch:
        groups.setdefault(_group_key(message), []).append(message)
    return list(groups.values())


async def _json_codec(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json_text, decoder=json_value, schema="pg_catalog")


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    """The queue's statements are single autocommitted statements that change no session state, so a
    connection goes back to the pool as it is (asyncpg's default reset is one more round trip each)."""


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
    wake_relay: Callable[[], None]  # mail.sent is in the outbox: this process's relay (or the API's) publishes it
    # One token wakes one idle worker: waking all of them for each new message would have each run
    # an empty claim.  Workers also poll, for messages queued by other replicas or coming due.
    _wake: asyncio.Queue[None] = field(default_factory=lambda: asyncio.Queue(maxsize=64))
    instance_key: int = field(default_factory=lambda: random.randint(1, 2**31 - 1))  # noqa: S311
    _lock_conn: asyncpg.Connection | None = None
    _pool: asyncpg.Pool | None = None
    _durable_pool: asyncpg.Pool | None = None
    _accounts: dict[tuple[uuid.UUID, str], tuple[float, SendingAccount | None]] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _busy: set[int] = field(default_factory=set)
    _all_idle: asyncio.Event = field(default_factory=asyncio.Event)
    sent_copies: SentCopies = field(init=False)

    def __post_init__(self) -> None:
        self.sent_copies = SentCopies(self.db, self.policy)

    async def start(self) -> None:
        """Take this process's advisory lock (it lasts as long as the process) and open the queue's pool."""
        self._lock_conn = await asyncpg.connect(asyncpg_dsn(self.db.url))
        await self._lock_conn.execute("SELECT pg_advisory_lock($1, $2)", queue.ADVISORY_CLASS, self.instance_key)
        if self.settings.smtp_connections:
            await self._lock_conn.add_listener(queue.QUEUE_CHANNEL, self._queued)
        # Two pools.  Only the record before the end of data must be on disk before the next step (R21: lost
        # in a database crash, recovery would send the message again), so it commits synchronously.  Every
        # other step commits asynchronously: a crash of PostgreSQL (not of this process) may lose the
        # last fraction of a second of them, which recovery then reads as it would a killed worker —
        # a lost claim is queued again, a lost settle leaves the message ``unknown``, never sent twice.
        self._durable_pool, self._pool = [
            await asyncpg.create_pool(
                asyncpg_dsn(self.db.url),
                min_size=1,
                max_size=size,
                init=_json_codec,
                reset=_nothing_to_reset,
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

    def _conn(self) -> PoolAcquireContext:
        """A connection of the queue's pool (``async with``); each statement commits on its own,
        asynchronously (see start)."""
        assert self._pool is not None, "Delivery.start() first"
        return self._pool.acquire()

    # --- recovery -----------------------------------------------------------------

    async def recover_once(self) -> int:
        # Liveness locks are probed on a connection of their own: on this process's lock connection
        # its own lock would be granted again (advisory locks are re-entrant within a session), and
        # its own messages in flight would look abandoned.
        probe = await asyncpg.connect(asyncpg_dsn(self.db.url))
        try:
            async with self.db.session() as session:
                recovered = await queue.recover_abandoned(session, probe)
            # the dead processes' quota reservations: what reached the server under each is counted,
            # the rest given back (once their messages above are decided: the next pass if not yet)
            async with self._conn() as conn:
                holds = await queue.abandoned_holds(conn, probe, self.instance_key)
        finally:
            await probe.close()
        for hold in holds:
            if hold.messages:
                self.quota.commit(
                    hold.company_id,
                    hold.reservation_id,
                    messages=hold.messages,
                    recipients=hold.recipients,
                    then=self._forget(hold.reservation_id),
                )
            else:
                self.quota.release(hold.company_id, hold.reservation_id, then=self._forget(hold.reservation_id))
        if recovered:
            log.warning(
                "recovered %d abandoned messages (%d unknown)",
                len(recovered),
                sum(r.state == "unknown" for r in recovered),
            )
            self.notify(len(recovered))
        return len(recovered)

    async def run_recovery(self) -> None:
        while True:
            try:
                await self.recover_once()
                await self._measure_queue()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recovery pass failed")
            await asyncio.sleep(self.settings.recovery_interval_seconds)

    async def _measure_queue(self) -> None:
        async with self.db.session() as session:
            counts: dict[str, int] = dict(
                (
                    await session.execute(
                        select(outgoing_message.c.state, func.count())
                        .where(outgoing_message.c.state.in_(OPEN_STATES))
                        .group_by(outgoing_message.c.state)
                    )
                ).all()
            )
        for state in OPEN_STATES:
            QUEUE_DEPTH.labels(state).set(counts.get(state, 0))

    # --- workers ------------------------------------------------------------------

    async def run_worker(self, number: int) -> None:
        worker = Worker(number)
        self._busy.add(number)
        self._all_idle.clear()
        try:
            while not self.stopping.is_set():
                try:
                    async with self._conn() as conn:
                        with timed("claim"):
                            batch = await queue.claim(
                                conn,
                                self.instance_key,
                                self.settings.claim_size,
                                worker.session.account_key if worker.session else None,
                            )
                except DB_ERRORS:
                    log.exception("worker %d: claiming failed; retrying", number)
                    await asyncio.sleep(1.0)
                    continue
                if not batch:
                    await self._settled(worker)
                    self._settle_held(worker.lease)
                    worker.lease = None
                    if worker.session is not None and worker.session.idle:
                        await self._drop(worker.session)
                        worker.session = None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.get(), self.settings.queue_poll_seconds)
                    continue
                await self._deliver_batch(worker, batch)
        finally:
            await self._settled(worker)
            self._settle_held(worker.lease)
            await self._drop(worker.session)
            self._busy.discard(number)
            if not self._busy:
                self._all_idle.set()

    async def _deliver_batch(self, worker: Worker, batch: list[queue.Claimed]) -> None:
        groups = _by_account(batch)
        for g, group in enumerate(groups):
            if worker.lease is None or not worker.lease.covers(group):
                self._settle_held(worker.lease)
                worker.lease = await self._reserve_group(group)
            elif not await self._hold(worker.lease, group):
                self._settle_held(worker.lease)
                worker.lease = None
            for n, message in enumerate(group):
                if self.stopping.is_set():
                    async with self.db.session() as db_session:
                        await queue.give_back(db_session, [*group[n:], *(m for rest in groups[g + 1 :] for m in rest)])
                    return
                await self._deliver_one(worker, message)
            if worker.lease is not None and worker.lease.exhausted:
                self._settle_held(worker.lease)
                worker.lease = None

    async def _deliver_one(self, worker: Worker, message: queue.Claimed) -> None:
        try:
            await self.deliver(worker, message)
        except Exception:
            log.exception("worker %d: delivering %s failed unexpectedly", worker.number, message.id)
            await self._settled(worker)
            await self._drop(worker.session)
            worker.session = None
            await self._settle_after_crash(message, worker.lease)

    async def _reserve_group(self, group: list[queue.Claimed]) -> HeldReservation | None:
        """A lease for ``quota_lease_messages`` like these of one account; None: reserve one by one."""
        first = group[0]
        largest = max(len(m.recipients) for m in group)
        extra = max(0, self.settings.quota_lease_messages - len(group))  # room for the account's next claims
        try:
            account = await self._account(first)
            if account is None:
                return None
            ask = account.quota_request(
                first.company_id,
                first.user_id,
                sum(len(m.recipients) for m in group) + extra * largest,
                max(m.size_bytes for m in group),
                messages=len(group) + extra,
                largest_recipients=largest,
            )
            reply = await self._reserve_held(ask)
        except (QuotaUnavailable, MailboxUnavailable):
            return None
        except DB_ERRORS:
            log.exception("could not record a quota hold; reserving one by one")
            return None
        if not reply.granted or reply.reservation_id is None:
            return None  # near a limit: each message asks on its own, and learns why and until when
        lease = HeldReservation(
            account,
            _group_key(first),
            reply.reservation_id,
            ask.messages,
            ask.recipients,
            largest,
            ask.size_bytes,
            time.monotonic() + self.settings.quota_lease_seconds,
        )
        if not await self._hold(lease, group):
            self._settle_held(lease)
            return None
        return lease

    async def _hold(self, lease: HeldReservation, group: list[queue.Claimed]) -> bool:
        """Name the lease on the group's rows (for recovery, should this process die) and count them."""
        try:
            async with self._conn() as conn:
                await queue.hold_reservation(conn, group, self.instance_key, lease.reservation_id)
        except DB_ERRORS:
            log.exception("could not record reservation %s; reserving one by one", lease.reservation_id)
            return False
        lease.take(group)
        return True

    def _settle_held(self, lease: HeldReservation | None) -> None:
        """Commit what the lease was used for and give back the rest."""
        if lease is None:
            return
        if lease.used_messages:
            self.quota.commit(
                lease.company_id,
                lease.reservation_id,
                messages=lease.used_messages,
                recipients=lease.used_recipients,
                then=self._forget(lease.reservation_id),
            )
        else:
            self.quota.release(lease.company_id, lease.reservation_id, then=self._forget(lease.reservation_id))

    async def _reserve_held(self, ask: QuotaReserveRequest) -> QuotaReserveReply:
        """Reserve under an id recorded as this process's hold first; a refusal (or no answer) forgets it."""
        async with self._conn() as conn:
            reservation_id = await queue.hold_quota(conn, ask.company_id, self.instance_key)
        try:
            reply = await self.quota.reserve(ask.model_copy(update={"reservation_id": reservation_id}))
        except QuotaUnavailable:
            # it may have been granted unheard: the quota service releases it when asked
            self.quota.release(ask.company_id, reservation_id, then=self._forget(reservation_id))
            raise
        if not reply.granted:
            await self._forget(reservation_id)()
        return reply

    def _forget(self, reservation_id: uuid.UUID | None) -> Settled:
        """Once the quota service has the settle, the hold is over (recovery would settle it again)."""

        async def forget() -> None:
            if reservation_id is not None:
                async with self._conn() as conn:
                    await queue.forget_quota(conn, reservation_id)

        return forget

    async def stop(self, grace_seconds: float) -> None:
        """Finish the messages in hand (up to ``grace_seconds``), give back the claimed rest, then stop.

        What is still in hand after the grace period is cut off and recovered by the next process:
        a message not yet recorded is sent again, a recorded one becomes ``unknown``.
        """
        self.stopping.set()
        self.notify(len(self._busy))
        deadline = time.monotonic() + grace_seconds
        if self._busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_idle.wait(), grace_seconds)
        await self.sent_copies.close(max(0.0, deadline - time.monotonic()))

    async def _settle_after_crash(self, message: queue.Claimed, held: HeldReservation | None) -> None:
        """A bug, not an SMTP answer: treat it like a killed process would be treated."""
        try:
            async with self._conn() as conn:
                if await queue.current_phase(conn, message) == "data":
                    await queue.settle(
                        conn,
                        queue.Settlement(
                            message,
                            "unknown",
                            "interrupted",
                            error="an internal error happened once the message was recorded as going out",
                        ),
                    )
                    if held is not None:
                        held.use(message)
                    return
                await queue.settle(
                    conn,
                    queue.Settlement(
                        message,
                        "deferred",
                        "interrupted",
                        next_attempt_at=self._backoff(message.attempt),
                        error="an internal error happened before the message went out; will retry",
                    ),
                )
        except DB_ERRORS:
            # the database is away: the row stays "sending" under this process's lock
            # and the next process (or recovery after a restart) settles it by phase
            log.exception("could not settle %s", message.id)

    def _backoff(self, attempt: int) -> datetime:
        base = min(self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2 ** max(0, attempt - 1))
        return datetime.now(UTC) + timedelta(seconds=base * random.uniform(0.5, 1.5))  # noqa: S311

    @staticmethod
    async def _drop(session: SmtpSession | None, polite: bool = True) -> None:
        if session is None:
            return
        if polite:
            await session.channel.quit()
        else:
            session.channel.close()

    async def _account(self, message: queue.Claimed) -> SendingAccount | None:
        # Kept a few seconds: looking the account up (and opening its password) for every message of a
        # batch would cost more than sending it; changes through the API drop the cache (forget_accounts).
        cached = self._accounts.get((message.user_id, message.account_key))
        if cached and cached[0] > time.monotonic():
            return cached[1]
        async with self.db.session() as db_session:
            account = await account_for_key(
                db_session, self.keys, self.mailboxes, message.company_id, message.user_id, message.account_key
            )
        self._accounts[(message.user_id, message.account_key)] = (time.monotonic() + ACCOUNT_CACHE_SECONDS, account)
        return account

    def _queued(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.notify(min(int(payload) if payload.isdigit() else 1, self.settings.smtp_connections))

    def notify(self, messages: int = 1) -> None:
        """New work is queued: wake up to ``messages`` idle workers."""
        for _ in range(messages):
            if self._wake.full():
                return
            self._wake.put_nowait(None)

    def forget_accounts(self) -> None:
        self._accounts.clear()
        self.routes.forget()

    async def _reserve(
        self, message: queue.Claimed, account: SendingAccount | None
    ) -> tuple[SendingAccount | None, queue.Claimed, uuid.UUID | None, Outcome | None]:
        """A granted reservation on the message's account, or on the next of its type (R15), or why not."""
        earliest: datetime | None = None
        limits: list[str] = []
        tried: set[str] = set()

        async def ask(candidate: SendingAccount) -> QuotaReserveReply:
            nonlocal earliest
            tried.add(candidate.key)
            reply = await self._reserve_held(
                candidate.quota_request(
                    message.company_id, message.user_id, len(message.recipients), message.size_bytes
                )
            )
            if not reply.granted:
                limits.append(f"{candidate.key}: {reply.limit} {reply.detail}".strip())
                if reply.retry_at is not None:
                    earliest = reply.retry_at if earliest is None else min(earliest, reply.retry_at)
            return reply

        if account is not None:
            reply = await ask(account)
            if reply.granted:
                return account, message, reply.reservation_id, None
        if account is None or account.account_type is not None:
            # the account is gone, or out of quota: the next active one of the same type takes over
            async with self.db.session() as db_session:
                route = await self.routes.route(db_session, message.company_id, message.user_id, message.category)
            same_type = [a for a in route.accounts if account is None or a.account_type == account.account_type]
            for candidate in same_type:
                if candidate.key in tried:
                    continue
                reply = await ask(candidate)
                if reply.granted:
                    return candidate, await self._switch(message, candidate), reply.reservation_id, None
            if not tried:
                return (
                    None,
                    message,
                    None,
                    Outcome("deferred", "no-account", error=route.reason, retry_at=self._backoff(message.attempt)),
                )
        if earliest is None:
            return (
                None,
                message,
                None,
                Outcome("failed", "quota-never", error="over a limit that can never pass: " + "; ".join(limits)),
            )
        return (
            None,
            message,
            None,
            Outcome("deferred", "quota", error="sending quota reached: " + "; ".join(limits), retry_at=earliest),
        )

    async def _switch(self, message: queue.Claimed, account: SendingAccount) -> queue.Claimed:
        draft = Draft.from_json(message.draft)
        built = build_message(
            draft,
            account.sender,
            message_id=message.message_id,
            date=message.created_at,
            unsubscribe_link=message.draft.get("unsubscribe_link"),
        )
        async with self.db.session() as db_session:
            await queue.switch_account(
                db_session, message, account.key, built.envelope_from, built.raw, account.sender.from_email
            )
        return queue.Claimed(
            **{
                **message.__dict__,
                "account_key": account.key,
                "raw": built.raw,
                "envelope_from": built.envelope_from,
                "size_bytes": len(built.raw),
            }
        )

    async def deliver(self, worker: Worker, message: queue.Claimed) -> None:
        """Send one message, under the worker's lease or with a reservation of its own.

        The answer is settled with the worker's next record (see _record), or alone when no record
        follows (_settled): never more than one message per worker between its record and its
        settle, which is what a kill turns unknown.
        """
        held = worker.lease
        if message.category == "marketing" and await self._unsubscribed(message):
            await self._finish(
                message,
                Outcome(
                    "failed",
                    "unsubscribed",
                    error="the recipient unsubscribed or complained after this message was queued",
                ),
            )
            return
        reservation: uuid.UUID | None
        if held is not None:
            account, reservation = held.account, held.reservation_id
        else:
            try:
                found, message, reservation, refusal = await self._reserve(message, await self._account(message))
            except (QuotaUnavailable, MailboxUnavailable) as exc:
                await self._finish(
                    message, Outcome("deferred", "unavailable", error=str(exc), retry_at=self._backoff(message.attempt))
                )
                return
            if refusal is not None or found is None:
                await self._finish(message, refusal or Outcome("deferred", "no-account"))
                return
            account = found
        started = time.perf_counter()
        outcome, worker.session = await self._transact(worker, message, account, reservation)
        SMTP_SECONDS.observe(time.perf_counter() - started)
        used = outcome.state in ("sent", "unknown")  # unknown counts: the recipient may have it
        if held is not None and used:
            held.use(message)
        await self._settled(worker)  # an answer that no record took along (the envelope never began)
        worker.answered = Answered(
            self._settlement(message, account, outcome), account, None if held is not None else reservation
        )

    async def _settled(self, worker: Worker) -> None:
        """Settle the worker's last answer alone (no record of a next message to go with it).  Never
        raises: a row it could not settle stays ``sending`` under this process's lock for recovery to
        decide."""
        answered, worker.answered = worker.answered, None
        if answered is not None:
            try:
                async with self._conn() as conn:
                    with timed("settle"):
                        await queue.settle(conn, answered.settlement)
            except DB_ERRORS:
                log.exception("settling %s failed", answered.settlement.message.id)
                await self._settle_after_crash(answered.settlement.message, None)
            await self._after_settle(worker, answered)

    async def _after_settle(self, worker: Worker, answered: Answered) -> None:
        """The message's own reservation, its delivery time, its Sent copy (handed to the appender)."""
        message, state, account = answered.settlement.message, answered.settlement.state, answered.account
        if answered.own_reservation is not None:
            end = self.quota.commit if state in ("sent", "unknown") else self.quota.release
            end(message.company_id, answered.own_reservation, then=self._forget(answered.own_reservation))
        if state != "sent":
            return
        self.wake_relay()
        DELIVERY_SECONDS.observe((datetime.now(UTC) - message.created_at).total_seconds())
        if account.sent_folder is not None:
            await self.sent_copies.add(account.sent_folder, message.id, message.raw, message.created_at)

    async def _unsubscribed(self, message: queue.Claimed) -> bool:
        async with self.db.session() as db_session:
            found = await db_session.scalar(
                select(func.count())
                .select_from(unsubscribe)
                .where(unsubscribe.c.company_id == message.company_id, unsubscribe.c.address.in_(message.recipients))
            )
        return bool(found)

    async def _transact(
        self, worker: Worker, message: queue.Claimed, account: SendingAccount, reservation: uuid.UUID | None
    ) -> tuple[Outcome, SmtpSession | None]:
        """One SMTP transaction on the worker's session; until the end of data everything is retryable,
        after it only a reply decides.  Returns the outcome and the session to keep (None: dropped).

        The record (R21) runs beside the envelope, after the worker's previous settle (see _record),
        and the body goes out meanwhile; only the end-of-data mark, from which the server holds the
        message, waits for the record.  An envelope the server refuses ends the attempt whatever the
        record says: its settle follows the record.
        """
        session = worker.session
        recording: asyncio.Task[bool] | None = None
        try:
            if session is not None and (
                session.account_key != account.key
                or not session.channel.is_connected
                or session.idle
                or session.recipients + len(message.recipients) > self.settings.recipients_per_connection
            ):
                await self._drop(session)
                session = None
            reused = session is not None
            if session is None:
                session = await self._open(account)
            recording = asyncio.create_task(self._record(worker, message, reservation))
            try:
                envelope = await session.channel.envelope(message.envelope_from, message.recipients)
            except aiosmtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                # the server closed a kept session without our noticing: one fresh session, no retry spent
                await self._drop(session, polite=False)
                session = await self._open(account)
                envelope = await session.channel.envelope(message.envelope_from, message.recipients)
            session.recipients += len(message.recipients)
            session.last_used = time.monotonic()
            refusal = await self._refusal(session, envelope, message)
            if refusal is not None:
                outcome, kept = refusal
                return await self._unrecorded(recording, outcome), kept
            session.channel.send_body(message.raw)
        except (MailConnectionError, aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self._drop(session, polite=False)
            text = exc.user_message if isinstance(exc, MailConnectionError) else f"{type(exc).__name__}: {exc}"
            failure = Outcome("deferred", "before-data", error=text, retry_at=self._backoff(message.attempt))
            return await self._unrecorded(recording, failure), None

        try:
            if not await recording:  # cannot happen while this process holds its lock
                raise RuntimeError(f"message {message.id} is no longer held by this worker")
        except BaseException:
            session.channel.close()  # without its end of data the server drops the message (RFC 5321 §3.8)
            raise
        try:
            reply = await session.channel.end_data(self.settings.data_timeout_seconds)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            SMTP_REPLIES.labels("data", "none").inc()
            await self._drop(session, polite=False)
            return _unknown(f"no reply after the message was sent ({type(exc).__name__})"), None
        SMTP_REPLIES.labels("data", _reply_class(reply.code)).inc()
        if reply.code // 100 == 2:
            refused = "; ".join(f"{address}: {refusal}" for address, refusal in envelope.refused)
            return Outcome(
                "sent", "sent", reply=str(reply), error=f"some recipients were refused: {refused}" if refused else None
            ), session
        if reply.code // 100 in (4, 5):
            return self._refused(message, "data", reply), session
        await self._drop(session, polite=False)
        return _unknown(f"the server answered the end of data with {reply}, which SMTP does not define there"), None

    async def _open(self, account: SendingAccount) -> SmtpSession:
        return SmtpSession(account.key, await open_channel(account.endpoint, self.policy))

    async def _refusal(
        self, session: SmtpSession, envelope: Envelope, message: queue.Claimed
    ) -> tuple[Outcome, SmtpSession | None] | None:
        """What the server refused before the message's data, and the session to keep; None: nothing."""
        if envelope.mail.code != 250:  # pipelined, its RCPT TOs and DATA were refused with it
            SMTP_REPLIES.labels("envelope", _reply_class(envelope.mail.code)).inc()
            await self._drop(session)
            return self._refused(message, "envelope", envelope.mail), None
        for _, reply in envelope.refused:
            SMTP_REPLIES.labels("rcpt", _reply_class(reply.code)).inc()
        if not envelope.accepted:
            detail = "; ".join(f"{address}: {reply}" for address, reply in envelope.refused)
            if any(reply.code < 500 for _, reply in envelope.refused):
                outcome = Outcome(
                    "deferred",
                    "rcpt-4xx",
                    reply=detail,
                    error="recipients refused for now: " + detail,
                    retry_at=self._backoff(message.attempt),
                )
            else:
                outcome = Outcome("failed", "rcpt-5xx", reply=detail, error="every recipient was refused: " + detail)
        elif envelope.data is not None and envelope.data.code != 354:
            SMTP_REPLIES.labels("data", _reply_class(envelope.data.code)).inc()
            outcome = self._refused(message, "data", envelope.data)
        else:
            return None
        if await session.channel.rset():
            return outcome, session
        await self._drop(session, polite=False)
        return outcome, None

    def _refused(self, message: queue.Claimed, stage: str, reply: Reply) -> Outcome:
        if reply.code >= 500:
            return Outcome("failed", f"{stage}-5xx", reply=str(reply), error=str(reply))
        return Outcome(
            "deferred", f"{stage}-4xx", reply=str(reply), error=str(reply), retry_at=self._backoff(message.attempt)
        )

    async def _record(self, worker: Worker, message: queue.Claimed, reservation: uuid.UUID | None) -> bool:
        """The record before the end of data (R21), in one statement with the settle of the worker's last answer
        when the message is under a lease (the usual case), else after that settle."""
        assert self._durable_pool is not None
        answered = worker.answered
        if answered is None or worker.lease is None or reservation is None:
            await self._settled(worker)
            async with self._durable_pool.acquire() as conn:
                with timed("record"):
                    return await queue.record_data_started(
                        conn, message, self.instance_key, reservation, leased=worker.lease is not None
                    )
        worker.answered = None
        try:
            async with self._durable_pool.acquire() as conn:
                with timed("settle-then-record"):
                    ours = await queue.settle_then_record(
                        conn, answered.settlement, message, self.instance_key, reservation
                    )
        except DB_ERRORS:
            worker.answered = answered  # neither was written: the answer is settled alone later
            raise
        await self._after_settle(worker, answered)
        return ours

    @staticmethod
    async def _unrecorded(recording: asyncio.Task[bool] | None, outcome: Outcome) -> Outcome:
        """No end of data was sent, whatever the record says; the settle follows the record."""
        if recording is not None:
            try:
                await recording
            except DB_ERRORS:
                log.exception("recording before the end of data failed")
        return outcome

    def _settlement(self, message: queue.Claimed, account: SendingAccount | None, outcome: Outcome) -> queue.Settlement:
        state, error = outcome.state, outcome.error
        if state == "deferred" and message.attempt >= self.settings.max_attempts:
            state, error = "failed", f"gave up after {message.attempt} attempts: {error}"
        if state == "deferred":
            RETRIES.labels(outcome.outcome).inc()
        OUTCOMES.labels(outcome.outcome).inc()
        event = self._sent_event(message, account) if state == "sent" and account is not None else None
        return queue.Settlement(message, state, outcome.outcome, outcome.reply, outcome.retry_at, error, event)

    async def _finish(self, message: queue.Claimed, outcome: Outcome) -> None:
        """Settle a message that never reached the server."""
        async with self._conn() as conn:
            await queue.settle(conn, self._settlement(message, None, outcome))

    def _sent_event(self, message: queue.Claimed, account: SendingAccount) -> MailSentV1:
        draft = Draft.from_json(message.draft)
        return MailSentV1(
            company_id=message.company_id,
            payload=MailSentPayload(
                message_id=message.message_id,
                mailbox_id=account.mailbox_id,
                user_id=message.user_id,
                folder="sent",
                direction="outbound",
                from_address=account.sender.from_email,
                from_name=account.sender.from_name,
                to=[r.address for r in draft.to],
                cc=[r.address for r in draft.cc],
                subject=draft.subject,
                sent_at=datetime.now(UTC),
                text=draft.text or "",
                html=draft.html,
                attachments=[
                    Attachment(filename=a.filename, content_type=a.content_type, size=len(a.content))
                    for a in draft.attachments
                ],
                outgoing_message_id=message.id,
                category="marketing" if message.category == "marketing" else "personal",
                smtp_account_id=account.smtp_account_id,
            ),
        )
