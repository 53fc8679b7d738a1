"""The record before the end of data (R21) and the settle of each attempt, on asyncpg pools of their
own.

Only the record must be on disk before the next step (lost in a database crash, recovery would send
the message again), so it commits synchronously on the durable pool; every other step commits
asynchronously: a crash of PostgreSQL (not of this process) may lose the last fraction of a second
of them, which recovery then reads as it would a killed worker (a lost claim is queued again, a lost
settle leaves the message ``unknown``), never sent twice.  Through SQLAlchemy these steps cost more
CPU than SMTP itself.

A worker's answer is not settled at once: under a lease (the usual case) its settle is written in
one durable statement with the next message's record, while the worker speaks that message's
envelope (repository.SETTLE_SENT_THEN_RECORD); otherwise, and when no message follows, it is written
alone.  A worker so has at most one message recorded and not settled, and neither round trip adds to
a message's time unless it outlasts the envelope and the body.  The price: a process killed before a
message's end of data leaves it ``unknown`` although the server dropped it (it was recorded, R21
forbids guessing).  A kill leaves at most one ``unknown`` per worker, and nothing is sent twice.

After the settle: the message's own reservation is committed or released, the relay woken for
``mail.sent``, and the Sent copy handed to its folder's appender (delivery.sent_copy).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from leadline_proto.events import Attachment, MailSentPayload, MailSentV1
from leadline_send.config import Settings
from leadline_send.delivery import repository
from leadline_send.delivery.accounts import SendingAccount
from leadline_send.delivery.outcome import Backoff, Outcome
from leadline_send.delivery.reservations import QuotaReservations
from leadline_send.delivery.sent_copy import SentCopies
from leadline_send.messages.composition import Draft
from leadline_send.metrics import DELIVERY_SECONDS, OUTCOMES, RETRIES, timed
from leadline_send.states import AttemptPhase, MessageState, Reason

log = logging.getLogger("leadline.send.delivery")


@dataclass(frozen=True)
class Answer:
    """A message the server answered (or did not), its settle not yet written."""

    settlement: repository.Settlement
    account: SendingAccount | None
    own_reservation: uuid.UUID | None  # not under a lease: committed or given back after the settle


class Settling:
    """Each worker's one unsettled answer, its record-then-settle statements, and what follows a
    settle."""

    def __init__(
        self,
        settings: Settings,
        instance_key: int,
        durable: repository.Connection,
        connection: repository.Connection,
        reservations: QuotaReservations,
        sent_copies: SentCopies,
        wake_relay: Callable[[], None],
        backoff: Backoff,
    ) -> None:
        self.settings = settings
        self.instance_key = instance_key
        self._durable = durable
        self._connection = connection
        self.reservations = reservations
        self.sent_copies = sent_copies
        self.wake_relay = wake_relay
        self.backoff = backoff
        self._unsettled: dict[int, Answer] = {}  # worker number → its last answer

    async def answered(
        self,
        worker: int,
        message: repository.Claimed,
        account: SendingAccount,
        outcome: Outcome,
        own_reservation: uuid.UUID | None,
    ) -> None:
        """Keep the worker's answer until its next record takes it along (or settle_pending); an
        earlier answer that no record took along (the envelope never began) is settled first."""
        await self.settle_pending(worker)
        self._unsettled[worker] = Answer(
            self.settlement(message, account, outcome), account, own_reservation
        )

    async def record(
        self,
        worker: int,
        message: repository.Claimed,
        reservation: uuid.UUID | None,
        *,
        leased: bool,
    ) -> bool:
        """The record before the end of data, in one statement with the settle of the worker's last
        answer when the message is under a lease (the usual case), else after that settle.  False:
        the message is no longer this worker's (its end of data must not be sent)."""
        answer = self._unsettled.get(worker)
        if answer is None or not leased or reservation is None:
            await self.settle_pending(worker)
            async with self._durable() as conn:
                with timed("record"):
                    return await repository.record_data_started(
                        conn, message, self.instance_key, reservation, leased=leased
                    )
        async with self._durable() as conn:  # if it fails neither was written: the answer stays
            with timed("settle-then-record"):
                ours = await repository.settle_then_record(
                    conn, answer.settlement, message, self.instance_key, reservation
                )
        del self._unsettled[worker]
        await self._after_settle(answer)
        return ours

    async def settle_pending(self, worker: int) -> None:
        """Settle the worker's last answer alone (no record of a next message to go with it).  Never
        raises: a row it could not settle stays ``sending`` under this process's lock for recovery
        to decide."""
        answer = self._unsettled.pop(worker, None)
        if answer is None:
            return
        try:
            async with self._connection() as conn:
                with timed("settle"):
                    await repository.settle(conn, answer.settlement)
        except repository.DB_ERRORS:
            log.exception("settling %s failed", answer.settlement.message.id)
            await self.after_crash(answer.settlement.message)
        await self._after_settle(answer)

    async def _after_settle(self, answer: Answer) -> None:
        """The message's own reservation, its delivery time, its Sent copy (handed to the
        appender)."""
        message, state = answer.settlement.message, answer.settlement.state
        if answer.own_reservation is not None:
            self.reservations.settle_own(message, answer.own_reservation, state)
        if state != MessageState.SENT or answer.account is None:
            return
        self.wake_relay()
        DELIVERY_SECONDS.observe((datetime.now(UTC) - message.created_at).total_seconds())
        if answer.account.sent_folder is not None:
            await self.sent_copies.add(
                answer.account.sent_folder, message.id, message.raw, message.created_at
            )

    def settlement(
        self, message: repository.Claimed, account: SendingAccount | None, outcome: Outcome
    ) -> repository.Settlement:
        if outcome.state == MessageState.DEFERRED and message.attempt >= self.settings.max_attempts:
            outcome = Outcome(
                MessageState.FAILED,
                outcome.reason,
                reply=outcome.reply,
                error=f"gave up after {message.attempt} attempts: {outcome.error}",
            )
        if outcome.state == MessageState.DEFERRED:
            RETRIES.labels(outcome.reason).inc()
        OUTCOMES.labels(outcome.reason).inc()
        event = (
            sent_event(message, account)
            if outcome.state == MessageState.SENT and account is not None
            else None
        )
        return repository.Settlement(message, outcome, event)

    async def finish(self, message: repository.Claimed, outcome: Outcome) -> None:
        """Settle a message that never reached the server."""
        async with self._connection() as conn:
            await repository.settle(conn, self.settlement(message, None, outcome))

    async def after_crash(self, message: repository.Claimed) -> bool:
        """A bug, not an SMTP answer: treat it like a killed process would be treated.  Whether the
        message may have reached the server (it was recorded before its end of data)."""
        try:
            async with self._connection() as conn:
                if await repository.current_phase(conn, message) == AttemptPhase.DATA:
                    outcome = Outcome(
                        MessageState.UNKNOWN,
                        Reason.INTERRUPTED,
                        error=(
                            "an internal error happened once the message was recorded as going out"
                        ),
                    )
                    await repository.settle(conn, repository.Settlement(message, outcome))
                    return True
                outcome = self.backoff.deferred(
                    Reason.INTERRUPTED,
                    message.attempt,
                    "an internal error happened before the message went out; will retry",
                )
                await repository.settle(conn, repository.Settlement(message, outcome))
                return False
        except repository.DB_ERRORS:
            # the database is away: the row stays "sending" under this process's lock
            # and the next process (or recovery after a restart) settles it by phase
            log.exception("could not settle %s", message.id)
            return False


def sent_event(message: repository.Claimed, account: SendingAccount) -> MailSentV1:
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
