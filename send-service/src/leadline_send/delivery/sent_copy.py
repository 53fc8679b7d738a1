"""The copy of each sent message in the sender's Sent folder (R12), appended beside delivery.

A delivery worker hands a sent message over (:meth:`SentCopies.add`) and goes on
to its next SMTP transaction.  Each Sent folder (an account's IMAP login) has
one appender task and one IMAP connection, kept while copies keep coming
(``IDLE_SECONDS``): it takes every copy waiting, up to ``BATCH``, and appends them
in one command where the server offers MULTIAPPEND (RFC 3502: one round trip,
one commit on the server), one after another on the same connection otherwise.
The outcome is written on the messages' rows (``sent_copy``) in one statement.

Copies wait in memory: at most ``WAITING`` per Sent folder, beyond which
:meth:`add` waits too, so a slow IMAP server slows delivery rather than
growing without bound.  A failed append is recorded ("not saved: ...") and
never retried by itself (the message is sent; the user sees why its copy is
missing).  A process killed with copies waiting leaves those messages with no
``sent_copy`` note: nothing says their copy was made, and nothing makes it
later (an append cannot be told apart from one that already happened).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter

from leadline_kit.db import Database
from leadline_mail.imap import ImapClient, ImapSettings, connect_imap
from leadline_mail.net import MailConnectionError
from leadline_send.delivery import repository
from leadline_send.delivery.accounts import SentFolder
from leadline_send.delivery.smtp import SmtpPolicy
from leadline_send.metrics import timed

log = logging.getLogger("leadline.send.sent-copy")

BATCH = 50
WAITING = 1000
IDLE_SECONDS = 30.0

SENT_COPIES = Counter(
    "leadline_send_sent_copies_total",
    "Copies of sent messages appended to the Sent folder (saved) or not (failed)",
    ["outcome"],
)
SENT_COPY_APPENDS = Counter(
    "leadline_send_sent_copy_appends_total",
    "APPEND commands (or MULTIAPPEND batches) for Sent copies",
)

# message id, its bytes, its internal date (when it was queued)
Copy = tuple[uuid.UUID, bytes, datetime]


@dataclass
class _Appender:
    """One Sent folder's queue and the task that appends from it."""

    waiting: asyncio.Queue[Copy] = field(default_factory=lambda: asyncio.Queue(maxsize=WAITING))
    task: asyncio.Task[None] | None = None
    in_hand: int = 0
    closing: bool = False  # idle and leaving: the next copy starts a new appender


class SentCopies:
    def __init__(self, db: Database, policy: SmtpPolicy) -> None:
        self.db = db
        self.policy = policy
        self._appenders: dict[SentFolder, _Appender] = {}

    async def add(
        self, target: SentFolder, message_id: uuid.UUID, raw: bytes, queued_at: datetime
    ) -> None:
        """Queue one copy; waits only while the folder already has ``WAITING`` copies queued."""
        appender = self._appenders.get(target)
        if appender is None or appender.closing:
            appender = self._appenders[target] = _Appender()
            appender.task = asyncio.create_task(
                self._append_forever(target, appender), name=f"sent-copy-{target.username}"
            )
        await appender.waiting.put((message_id, raw, queued_at))

    def pending(self) -> int:
        """Copies queued or being appended, over every Sent folder."""
        return sum(a.waiting.qsize() + a.in_hand for a in self._appenders.values())

    async def close(self, grace_seconds: float) -> None:
        """Let the queued copies go out (up to ``grace_seconds``), then stop every appender."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(a.waiting.join() for a in self._appenders.values())), grace_seconds
            )
        tasks = [a.task for a in self._appenders.values() if a.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _append_forever(self, target: SentFolder, appender: _Appender) -> None:
        client: ImapClient | None = None
        try:
            while True:
                try:
                    first = await asyncio.wait_for(appender.waiting.get(), IDLE_SECONDS)
                except TimeoutError:
                    if appender.waiting.empty():
                        # no await between finding the queue empty and leaving it: add() starts anew
                        appender.closing = True
                        if self._appenders.get(target) is appender:
                            del self._appenders[target]
                        return
                    continue
                batch = [first]
                while len(batch) < BATCH and not appender.waiting.empty():
                    batch.append(appender.waiting.get_nowait())
                appender.in_hand = len(batch)
                try:
                    client = await self._append(client, target, batch)
                finally:
                    appender.in_hand = 0
                    for _ in batch:
                        appender.waiting.task_done()
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.logout()

    async def _append(
        self, client: ImapClient | None, target: SentFolder, batch: list[Copy]
    ) -> ImapClient | None:
        """Append a batch, on the kept connection or a new one; record the outcome; the connection
        to keep."""
        try:
            if client is None or client.closed:
                client = await connect_imap(
                    ImapSettings(
                        host=target.host,
                        port=target.port,
                        tls=target.tls,
                        username=target.username,
                        password=target.password,
                        access_token=target.access_token,
                        pinned_sha256=target.pinned_sha256,
                        cafile=self.policy.cafile,
                        allow_networks=self.policy.allow_networks,
                        allow_plaintext=self.policy.allow_plaintext,
                    )
                )
            with timed("sent-copy-append"):
                await client.append_many(target.folder, [(raw, when) for _, raw, when in batch])
            SENT_COPY_APPENDS.inc()
            note, outcome = f"saved to {target.folder}", "saved"
        except (MailConnectionError, OSError, TimeoutError, ValueError) as exc:
            note = "not saved: " + (
                exc.user_message if isinstance(exc, MailConnectionError) else str(exc)
            )
            outcome = "failed"
            log.warning("copy of %d message(s) to Sent failed: %s", len(batch), note)
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.logout()
            client = None
        SENT_COPIES.labels(outcome).inc(len(batch))
        try:
            with timed("sent-copy-note"):
                async with self.db.session() as session:
                    await repository.note_sent_copy(
                        session, [message_id for message_id, _, _ in batch], note
                    )
        except Exception:
            log.exception("recording the Sent copy of %d message(s) failed", len(batch))
        return client
