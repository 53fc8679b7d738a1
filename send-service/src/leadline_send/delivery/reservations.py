"""Quota reservations of the delivery workers (R14, R15): a lease per claim, or one reservation per
message.

A process reserves quota for up to ``quota_lease_messages`` messages of one account in one ask
(``messages=k``, all or nothing): a :class:`QuotaLease`, shared by the process's workers, that
serves their claims of that account for up to ``quota_lease_seconds``, so messages trickling in one
by one (each worker claiming one) are not each a round trip to the quota service.  The reservation
is named on the rows it covers.  A lease is retired once it cannot take a claim (used up, expired);
when the last message taken under it is done, only the messages that reached the server (sent or
unknown) are committed and the rest is given back.  If the lease does not fit, each message reserves
on its own, with rotation to the next account of its type (R15), so an account near its limit sends
exactly its allowance.

Every reservation id is recorded as this process's hold (``quota_hold``) *before* the quota service
is asked, and forgotten once its commit or release was answered: a process that dies at any moment
leaves holds that recovery settles (:meth:`QuotaReservations.settle_abandoned`), committing what was
used under each.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from leadline_proto.requests import QuotaReserveReply, QuotaReserveRequest
from leadline_send.config import Settings
from leadline_send.delivery import repository
from leadline_send.delivery.accounts import Route, SendingAccount
from leadline_send.delivery.outcome import Backoff, Outcome
from leadline_send.delivery.quota import QuotaClient, QuotaUnavailable, Settled
from leadline_send.states import REACHED_SERVER, MessageState, Reason

log = logging.getLogger("leadline.send.delivery")

DB_ERRORS = repository.DB_ERRORS

AccountKey = tuple[uuid.UUID, uuid.UUID, str]  # company, sender, account key


def account_of(message: repository.Claimed) -> AccountKey:
    return message.company_id, message.user_id, message.account_key


def by_account(batch: list[repository.Claimed]) -> list[list[repository.Claimed]]:
    groups: dict[AccountKey, list[repository.Claimed]] = {}
    for message in batch:
        groups.setdefault(account_of(message), []).append(message)
    return list(groups.values())


@dataclass(eq=False)
class QuotaLease:
    """A worker's reservation for up to ``messages`` messages of one account.

    It covers the messages claimed with it and, for a short while, later claims of the same
    account's messages, as long as they fit in what was reserved.  ``used`` is what reached the
    server (or may have); only that is committed, the rest is given back.
    """

    account: SendingAccount
    group: AccountKey
    reservation_id: uuid.UUID
    messages: int  # reserved
    recipients: int
    largest_recipients: int
    largest_bytes: int
    expires: float  # monotonic; takes no claim after it, and is settled once its messages are done
    taken_messages: int = 0
    taken_recipients: int = 0
    used_messages: int = 0
    used_recipients: int = 0
    in_hand: int = 0  # taken and not done: settling before they are would miss what they use
    retired: bool = False

    @property
    def company_id(self) -> uuid.UUID:
        return self.group[0]

    def covers(self, messages: list[repository.Claimed]) -> bool:
        return (
            account_of(messages[0]) == self.group
            and time.monotonic() < self.expires
            and self.taken_messages + len(messages) <= self.messages
            and self.taken_recipients + sum(len(m.recipients) for m in messages) <= self.recipients
            and all(
                len(m.recipients) <= self.largest_recipients and m.size_bytes <= self.largest_bytes
                for m in messages
            )
        )

    def take(self, messages: list[repository.Claimed]) -> None:
        self.taken_messages += len(messages)
        self.taken_recipients += sum(len(m.recipients) for m in messages)
        self.in_hand += len(messages)

    @property
    def exhausted(self) -> bool:
        return self.taken_messages >= self.messages or time.monotonic() >= self.expires

    def done(self, message: repository.Claimed, reached_server: bool) -> None:
        """One taken message is settled (or given back): counted if it reached the server, or may
        have."""
        self.in_hand -= 1
        if reached_server:
            self.used_messages += 1
            self.used_recipients += len(message.recipients)


@dataclass(frozen=True)
class Reserved:
    """A message's own reservation (no lease covered it), on its account or the next of its type."""

    account: SendingAccount
    message: repository.Claimed  # rebuilt for the account rotation picked
    reservation_id: uuid.UUID | None


# rotation (R15): the accounts a message may go out through now, and the message rebuilt for another
# one
Rotation = Callable[[repository.Claimed], Awaitable[Route]]
Switch = Callable[[repository.Claimed, SendingAccount], Awaitable[repository.Claimed]]


class QuotaReservations:
    """Reserving, naming, committing and releasing quota for the workers of one process."""

    def __init__(
        self,
        quota: QuotaClient,
        settings: Settings,
        instance_key: int,
        connection: repository.Connection,
        backoff: Backoff,
    ) -> None:
        self.quota = quota
        self.settings = settings
        self.instance_key = instance_key
        self._connection = connection
        self.backoff = backoff
        # the lease that takes an account's claims now
        self._leases: dict[AccountKey, QuotaLease] = {}
        self._retired: set[QuotaLease] = set()  # settled once their last message is done
        self._asking: dict[AccountKey, asyncio.Lock] = {}

    # --- leases -------------------------------------------------------------------------------

    async def lease(
        self, group: list[repository.Claimed], account: SendingAccount | None
    ) -> QuotaLease | None:
        """The account's lease, named on ``group``'s rows, or a new one; None: reserve one by
        one."""
        # another account's expired lease is settled now, not when the queue next runs empty
        self.end_idle()
        if account is None:
            return None
        key = account_of(group[0])
        lock = self._asking.setdefault(key, asyncio.Lock())
        async with lock:
            # one ask at a time per account: workers claiming together share its answer
            current = self._leases.get(key)
            if current is not None:
                if current.covers(group):
                    return await self._named(current, group)
                self._retire(current)
            lease = await self._new_lease(group, account)
            if lease is not None:
                self._leases[key] = lease
            return lease

    def release(self, lease: QuotaLease, message: repository.Claimed, reached_server: bool) -> None:
        """A message taken under ``lease`` is done; the lease is settled once it is retired and
        empty."""
        lease.done(message, reached_server)
        # (a lease retired early, by a claim it could not take, is settled by its last message too)
        if lease.exhausted or lease.retired:
            self._retire(lease)

    def end_idle(self) -> None:
        """Retire the leases that can take no more claims (expired), settling those with nothing in
        hand."""
        for lease in [lease for lease in self._leases.values() if lease.exhausted]:
            self._retire(lease)

    def end_all(self) -> None:
        """The process stops: no lease takes another claim."""
        for lease in list(self._leases.values()):
            self._retire(lease)

    def _retire(self, lease: QuotaLease) -> None:
        if not lease.retired:
            lease.retired = True
            if self._leases.get(lease.group) is lease:
                del self._leases[lease.group]
            self._retired.add(lease)
        if lease.in_hand <= 0 and lease in self._retired:
            self._retired.discard(lease)
            self.end(lease)

    async def _new_lease(
        self, group: list[repository.Claimed], account: SendingAccount
    ) -> QuotaLease | None:
        first = group[0]
        largest = max(len(m.recipients) for m in group)
        # room for the account's next claims
        extra = max(0, self.settings.quota_lease_messages - len(group))
        ask = account.quota_request(
            first.company_id,
            first.user_id,
            sum(len(m.recipients) for m in group) + extra * largest,
            max(m.size_bytes for m in group),
            messages=len(group) + extra,
            largest_recipients=largest,
        )
        try:
            reply = await self._reserve_recorded(ask)
        except QuotaUnavailable:
            return None
        except DB_ERRORS:
            log.exception("could not record a quota hold; reserving one by one")
            return None
        if not reply.granted or reply.reservation_id is None:
            return None  # near a limit: each message asks on its own, and learns why and until when
        lease = QuotaLease(
            account,
            account_of(first),
            reply.reservation_id,
            ask.messages,
            ask.recipients,
            largest,
            ask.size_bytes,
            time.monotonic() + self.settings.quota_lease_seconds,
        )
        return await self._named(lease, group)

    async def _named(self, lease: QuotaLease, group: list[repository.Claimed]) -> QuotaLease | None:
        """The lease, taking ``group`` and named on its rows (for recovery, should this process
        die); None if the rows could not be named (the messages then reserve one by one)."""
        # before the write: a lease with messages in hand is not settled meanwhile
        lease.take(group)
        try:
            async with self._connection() as conn:
                await repository.hold_reservation(
                    conn, group, self.instance_key, lease.reservation_id
                )
        except DB_ERRORS:
            log.exception(
                "could not record reservation %s; reserving one by one", lease.reservation_id
            )
            for message in group:
                lease.done(message, reached_server=False)
            self._retire(lease)
            return None
        return lease

    def end(self, lease: QuotaLease) -> None:
        """Commit what the lease was used for and give back the rest."""
        self._settle_used(
            lease.company_id, lease.reservation_id, lease.used_messages, lease.used_recipients
        )

    def _settle_used(
        self, company_id: uuid.UUID, reservation_id: uuid.UUID, messages: int, recipients: int
    ) -> None:
        """Count ``messages`` of a reservation (the rest is freed), or release it whole; then forget
        its hold."""
        then = self._forget(reservation_id)
        if messages:
            self.quota.commit(
                company_id, reservation_id, messages=messages, recipients=recipients, then=then
            )
        else:
            self.quota.release(company_id, reservation_id, then=then)

    # --- one message's own reservation ---------------------------------------------------------

    async def reserve(
        self,
        message: repository.Claimed,
        account: SendingAccount | None,
        rotation: Rotation,
        switch: Switch,
    ) -> Reserved | Outcome:
        """A granted reservation on the message's account, or on the next of its type (R15), or why
        not."""
        earliest: datetime | None = None
        limits: list[str] = []
        tried: set[str] = set()

        async def ask(candidate: SendingAccount) -> QuotaReserveReply:
            nonlocal earliest
            tried.add(candidate.key)
            reply = await self._reserve_recorded(
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
                return Reserved(account, message, reply.reservation_id)
        if account is None or account.account_type is not None:
            # the account is gone, or out of quota: the next active one of the same type takes over
            route = await rotation(message)
            same_type = [
                a
                for a in route.accounts
                if account is None or a.account_type == account.account_type
            ]
            for candidate in same_type:
                if candidate.key in tried:
                    continue
                reply = await ask(candidate)
                if reply.granted:
                    return Reserved(
                        candidate, await switch(message, candidate), reply.reservation_id
                    )
            if not tried:
                return self.backoff.deferred(Reason.NO_ACCOUNT, message.attempt, route.reason)
        if earliest is None:
            return Outcome(
                MessageState.FAILED,
                Reason.QUOTA_NEVER,
                error="over a limit that can never pass: " + "; ".join(limits),
            )
        return Outcome(
            MessageState.DEFERRED,
            Reason.QUOTA,
            error="sending quota reached: " + "; ".join(limits),
            retry_at=earliest,
        )

    def settle_own(
        self, message: repository.Claimed, reservation_id: uuid.UUID, state: MessageState
    ) -> None:
        """A message's own reservation once it is settled: counted if it reached the server, else
        freed."""
        end = self.quota.commit if state in REACHED_SERVER else self.quota.release
        end(message.company_id, reservation_id, then=self._forget(reservation_id))

    # --- holds ----------------------------------------------------------------------------------

    async def _reserve_recorded(self, ask: QuotaReserveRequest) -> QuotaReserveReply:
        """Reserve under an id recorded as this process's hold first; a refusal (or no answer)
        forgets it."""
        async with self._connection() as conn:
            reservation_id = await repository.hold_quota(conn, ask.company_id, self.instance_key)
        try:
            reply = await self.quota.reserve(
                ask.model_copy(update={"reservation_id": reservation_id})
            )
        except QuotaUnavailable:
            # it may have been granted unheard: the quota service releases it when asked
            self.quota.release(ask.company_id, reservation_id, then=self._forget(reservation_id))
            raise
        if not reply.granted:
            await self._forget(reservation_id)()
        return reply

    def _forget(self, reservation_id: uuid.UUID) -> Settled:
        """Once the quota service has the settle, the hold is over (recovery would settle it
        again)."""

        async def forget() -> None:
            async with self._connection() as conn:
                await repository.forget_quota(conn, reservation_id)

        return forget

    def settle_abandoned(self, holds: list[repository.AbandonedHold]) -> None:
        """The dead processes' reservations: what reached the server under each is counted, the rest
        freed."""
        for hold in holds:
            self._settle_used(hold.company_id, hold.reservation_id, hold.messages, hold.recipients)
