"""One SMTP transaction on a worker's kept session, gated by the record before the end of data
(R21).

A worker keeps its SMTP session open across messages of the same account, opening a new one once
``recipients_per_connection`` recipients went over it (R14), when the account changes, or after
``SESSION_IDLE_SECONDS`` unused.  The envelope (MAIL FROM, RCPT TO, DATA) is one write when the
server offers PIPELINING (smtp.SmtpChannel), and the body follows at once.  The server holds a
message only from its end-of-data mark (the final ".") on; a connection closed before it cancels the
transaction (RFC 5321 §3.8).  So that mark is R21's gate: the record before the end of data runs
beside the envelope and the body, and only the mark waits for it; then the reply is awaited as long
as RFC 5321 allows (``data_timeout_seconds``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

import aiosmtplib

from leadline_mail.net import MailConnectionError
from leadline_send.config import Settings
from leadline_send.delivery import repository
from leadline_send.delivery.accounts import SendingAccount
from leadline_send.delivery.outcome import Backoff, Outcome, sent, unknown
from leadline_send.delivery.smtp import Envelope, SmtpChannel, SmtpPolicy, open_channel
from leadline_send.metrics import SMTP_REPLIES
from leadline_send.states import MessageState, Reason

log = logging.getLogger("leadline.send.delivery")

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
        # servers drop idle sessions after a few minutes (RFC 5321 asks for 5); a fresh one is
        # cheaper than a failed MAIL FROM that would cost the message a retry
        return time.monotonic() - self.last_used > SESSION_IDLE_SECONDS


def reply_class(code: int) -> str:
    return f"{code // 100}xx"


async def close_session(session: SmtpSession | None, polite: bool = True) -> None:
    if session is None:
        return
    if polite:
        await session.channel.quit()
    else:
        session.channel.close()


Record = Callable[
    [], Coroutine[None, None, bool]
]  # the record before the end of data: False if the message is no longer ours


class SmtpTransactions:
    def __init__(self, settings: Settings, policy: SmtpPolicy, backoff: Backoff) -> None:
        self.settings = settings
        self.policy = policy
        self.backoff = backoff

    async def send(
        self,
        session: SmtpSession | None,
        message: repository.Claimed,
        account: SendingAccount,
        record: Record,
    ) -> tuple[Outcome, SmtpSession | None]:
        """One transaction; until the end of data everything is retryable, after it only a reply
        decides. Returns the outcome and the session to keep (None: dropped).

        ``record`` runs beside the envelope and the body; an envelope the server refuses ends the
        attempt whatever the record says (its settle follows the record).
        """
        recording: asyncio.Task[bool] | None = None
        try:
            session, reused = await self._session_for(session, message, account)
            recording = asyncio.create_task(record())
            try:
                envelope = await session.channel.envelope(message.envelope_from, message.recipients)
            except aiosmtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                # the server closed a kept session without our noticing: one fresh session, no retry
                # spent
                await close_session(session, polite=False)
                session = await self._open(account)
                envelope = await session.channel.envelope(message.envelope_from, message.recipients)
            session.recipients += len(message.recipients)
            session.last_used = time.monotonic()
            refusal = await self._refusal(session, envelope, message)
            if refusal is not None:
                outcome, kept = refusal
                return await _unrecorded(recording, outcome), kept
            session.channel.send_body(message.raw)
        except (MailConnectionError, aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await close_session(session, polite=False)
            text = (
                exc.user_message
                if isinstance(exc, MailConnectionError)
                else f"{type(exc).__name__}: {exc}"
            )
            failure = self.backoff.deferred(Reason.BEFORE_DATA, message.attempt, text)
            return await _unrecorded(recording, failure), None
        return await self._end_of_data(session, message, envelope, recording)

    async def _end_of_data(
        self,
        session: SmtpSession,
        message: repository.Claimed,
        envelope: Envelope,
        recording: asyncio.Task[bool],
    ) -> tuple[Outcome, SmtpSession | None]:
        try:
            if not await recording:  # cannot happen while this process holds its lock
                raise RuntimeError(f"message {message.id} is no longer held by this worker")
        except BaseException:
            # without its end of data the server drops the message (RFC 5321 §3.8)
            session.channel.close()
            raise
        try:
            reply = await session.channel.end_data(self.settings.data_timeout_seconds)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            SMTP_REPLIES.labels("data", "none").inc()
            await close_session(session, polite=False)
            return unknown(f"no reply after the message was sent ({type(exc).__name__})"), None
        SMTP_REPLIES.labels("data", reply_class(reply.code)).inc()
        if reply.code // 100 == 2:
            refused = "; ".join(f"{address}: {refusal}" for address, refusal in envelope.refused)
            return sent(reply, refused), session
        if reply.code // 100 in (4, 5):
            return self.backoff.refused("data", reply, message.attempt), session
        await close_session(session, polite=False)
        return unknown(
            f"the server answered the end of data with {reply}, which SMTP does not define there"
        ), None

    async def _session_for(
        self, session: SmtpSession | None, message: repository.Claimed, account: SendingAccount
    ) -> tuple[SmtpSession, bool]:
        """The worker's session if it can take this message (True), else a new one (False)."""
        if session is not None and (
            session.account_key != account.key
            or not session.channel.is_connected
            or session.idle
            or session.recipients + len(message.recipients)
            > self.settings.recipients_per_connection
        ):
            await close_session(session)
            session = None
        if session is not None:
            return session, True
        return await self._open(account), False

    async def _open(self, account: SendingAccount) -> SmtpSession:
        return SmtpSession(account.key, await open_channel(account.endpoint, self.policy))

    async def _refusal(
        self, session: SmtpSession, envelope: Envelope, message: repository.Claimed
    ) -> tuple[Outcome, SmtpSession | None] | None:
        """What the server refused before the message's data, and the session to keep; None:
        nothing."""
        if envelope.mail.code != 250:  # pipelined, its RCPT TOs and DATA were refused with it
            SMTP_REPLIES.labels("envelope", reply_class(envelope.mail.code)).inc()
            await close_session(session)
            return self.backoff.refused("envelope", envelope.mail, message.attempt), None
        for _, reply in envelope.refused:
            SMTP_REPLIES.labels("rcpt", reply_class(reply.code)).inc()
        outcome: Outcome
        if not envelope.accepted:
            detail = "; ".join(f"{address}: {reply}" for address, reply in envelope.refused)
            if any(reply.code < 500 for _, reply in envelope.refused):
                outcome = self.backoff.deferred(
                    Reason.RCPT_4XX,
                    message.attempt,
                    "recipients refused for now: " + detail,
                    detail,
                )
            else:
                outcome = Outcome(
                    MessageState.FAILED,
                    Reason.RCPT_5XX,
                    reply=detail,
                    error="every recipient was refused: " + detail,
                )
        elif envelope.data is not None and envelope.data.code != 354:
            SMTP_REPLIES.labels("data", reply_class(envelope.data.code)).inc()
            outcome = self.backoff.refused("data", envelope.data, message.attempt)
        else:
            return None
        if await session.channel.rset():
            return outcome, session
        await close_session(session, polite=False)
        return outcome, None


async def _unrecorded(recording: asyncio.Task[bool] | None, outcome: Outcome) -> Outcome:
    """No end of data was sent, whatever the record says; the settle follows the record."""
    if recording is not None:
        try:
            await recording
        except repository.DB_ERRORS:
            log.exception("recording before the end of data failed")
    return outcome
