"""The folder-sync state machine of one mailbox (modelled on nylas/sync-engine's IMAP folder sync).

One replica holds a mailbox's lease (see :mod:`leadline_sync.sync.scheduler`)
and runs :class:`MailboxSync` over one IMAP connection::

    connect ──► NOTIFY ──► leads caught up? ──► rechecks ──► sync Sent ──► sync INBOX ──► IDLE on INBOX (or wait) ──┐
       ▲                                          ▲                                                               │
       │                                          └──────────── news of a folder, or its check falls due ◄────────┘
       │                                                        (which folder when: :mod:`leadline_sync.sync.live`)
       ├── an established session drops: reconnect quietly (a few times, with jitter)
       └── failure: log it, back off with jitter, give the lease back (R8: 48 h → connection_failed)

Syncing one folder (what comes first: :func:`leadline_sync.sync.folder.decide`)::

    SELECT ─┬─ no cursor ............ BEGIN: cursor = history top = UIDNEXT-1, history floor = UIDNEXT
            ├─ UIDVALIDITY changed .. RESCAN: cursor back to UID 0, rescan; nothing is published twice
            │                         because synced_message is unique per Message-ID in the folder
            ├─ nothing above cursor . NONE (Sent is checked with STATUS first, without SELECT)
            ├─ scan UIDs above the cursor in batches, oldest first, then
            └─ history below the floor: one window of UIDs per pass, newest first (the folders take turns)
                 each batch: headers ─► match (R5, R6) ─► bodies of matches only ─► parse ─► one transaction:
                 lease check + synced_message rows (ON CONFLICT DO NOTHING) + their events + cursor or floor

No mail is lost to a lead this service heard of late (it matches on its
copy of the leads, built from ``lead.*`` events):

- before the historical sync, the lead service is asked how many leads the
  company has, and the scan waits (status reason says so, with a timeout)
  until the copy holds as many;
- a lead whose addresses reach the copy later leaves a ``lead_recheck`` row
  (see :mod:`leadline_sync.mailbox.consumers`): before each pass the sync
  asks the server for the UIDs up to the cursor that name the addresses
  (``UID SEARCH`` on From/To/Cc/Bcc, and for a lead created after connect
  only mail dated or received from its creation day on) and examines them
  again; what was already published stays unique per Message-ID.

Every step is idempotent, so it is fine to be killed between any two of
them: a batch either committed its rows, events and cursor together, or not
at all and is scanned again (R26).  The historical and the live sync are the
same scan; "historical" just means the UIDs that existed at connect time.
Nothing about mail that matches no lead leaves this module: not an event,
not a row, not a log line.
"""  # noqa: E501

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit import rpc
from leadline_kit.backoff import Backoff
from leadline_kit.db import Database, transient
from leadline_kit.outbox import enqueue
from leadline_kit.sealing import CredentialError
from leadline_mail.bounces import Bounce, Complaint, parse_notice
from leadline_mail.imap import FetchedHeader, FetchedMessage, FolderStatus, ImapClient, connect_imap
from leadline_mail.mime import SUMMARY_FIELDS, HeaderSummary, ParsedMessage, parse_headers
from leadline_mail.net import ErrorKind, MailConnectionError
from leadline_proto.events import (
    Attachment,
    EventBase,
    MailBouncedPayload,
    MailBouncedV1,
    MailComplainedPayload,
    MailComplainedV1,
    MailPayload,
    MailSyncedV1,
)
from leadline_proto.requests import (
    LeadDirectoryReply,
    LeadDirectoryRequest,
    SyncAllowanceReply,
    SyncAllowanceRequest,
)
from leadline_proto.subjects import RPC_LEAD_DIRECTORY, RPC_SYNC_ALLOWANCE
from leadline_sync.context import SyncContext
from leadline_sync.logins import ServerLogin, imap_settings
from leadline_sync.mailbox import repository as mailboxes
from leadline_sync.mailbox import service
from leadline_sync.mailbox.states import SYNCED, MailboxStatus, SyncMode
from leadline_sync.matching import (
    CompanyDirectory,
    FolderRole,
    Match,
    Parties,
    load_directory,
    match_message,
    unmatched_reason,
)
from leadline_sync.models import outbox
from leadline_sync.sync import audit, repository
from leadline_sync.sync.folder import RESCAN_DAY, FolderAction, FolderCursor, decide, rescan_allowed
from leadline_sync.sync.live import FolderWatch

log = logging.getLogger("leadline.sync.engine")

SCANNED = Counter("leadline_sync_messages_scanned_total", "Message headers scanned", ["folder"])
PUBLISHED = Counter(
    "leadline_sync_messages_published_total",
    "Messages published (lead mail, bounces, complaints)",
    ["kind"],
)
FAILURES = Counter(
    "leadline_sync_connection_failures_total", "Failed mailbox connections", ["kind"]
)
RECHECKED = Counter(
    "leadline_sync_lead_recheck_messages_total",
    "Messages examined again because their lead reached the service after them",
    ["folder"],
)
AUDITS = Counter("leadline_sync_audits_total", "Completeness audits of a folder", ["folder"])
REFETCHED = Counter(
    "leadline_sync_audit_refetched_total",
    "Messages an audit found never examined and examined then",
    ["folder"],
)
DIRECTORY_WAITS = Counter(
    "leadline_sync_directory_waits_total",
    "Historical syncs that waited for the company's leads, by outcome",
    ["outcome"],
)
STAGE_SECONDS = Counter(
    "leadline_sync_stage_seconds_total",
    (
        "Seconds spent in each stage of the scan's batches, summed (bench/sync prints them as its "
        "breakdown)"
    ),
    ["stage"],
)
START_SECONDS = Counter(
    "leadline_sync_session_start_seconds_total",
    "Seconds from a worker's start (its claim) or a reconnect until the mailbox is live, summed by "
    "stage: row (reading the mailbox), login_queue (waiting at the login gate), login (connect, "
    "TLS, LOGIN), setup (folders, status, cursors, NOTIFY); divided by "
    "leadline_sync_session_starts_total, a mean",
    ["stage"],
)
SESSION_STARTS = Counter(
    "leadline_sync_session_starts_total", "IMAP sessions that reached live (or a rotation pass)"
)
DATABASE_RETRIES = Counter(
    "leadline_sync_database_retries_total",
    "Mailbox workers that met a transient database error and tried again after a pause",
    ["error"],
)
LIVE = Gauge(
    "leadline_sync_live_sessions",
    "Connected mailboxes by how the server tells of new mail: notify "
    "(every folder pushed), idle (INBOX pushed, Sent polled), poll (both polled)",
    ["push"],
)

MAX_QUIET_RECONNECTS = 3
QUIET_RECONNECT_SECONDS = 2.0
DIRECTORY_POLL_SECONDS = 0.25
RECHECKS_PER_PASS = 100
FIRST_HISTORY_BATCH = 20
AUDIT_EVERY = timedelta(days=1)
DATABASE_RETRY = Backoff(1.0, 60.0)  # a mailbox worker after a transient database error
# a dropped session's quiet reconnects (2, 4, 6 s, jittered: a restarted server's mailboxes do not
# all come back in the same instant)
QUIET_RECONNECT = Backoff(QUIET_RECONNECT_SECONDS, QUIET_RECONNECT_SECONDS * MAX_QUIET_RECONNECTS)
HEADER_CHUNK = 1000  # UIDs whose headers one FETCH reads and one directory query matches
# a history window doubles each pass of a session, up to 2**this times the setting: a pass SELECTs
# both folders (1–3 s each for 30,000 Maildir messages on a loaded Dovecot, issue 25), so 500-UID
# windows made a 50,000-message history 100 passes
WINDOW_GROWTH = 3


class LeaseLost(Exception):
    """Another replica owns the mailbox now, or it was disabled: stop without writing anything."""


class SessionDropped(Exception):
    """An established IMAP session broke (after a successful login); ``lasted`` seconds."""

    def __init__(self, error: MailConnectionError, lasted: float) -> None:
        super().__init__(error.user_message)
        self.error = error
        self.lasted = lasted


class PlanLimitReached(Exception):
    """The company's plan allows no more synced emails for this user today (R14); resume at
    ``resets_at``."""

    def __init__(self, resets_at: datetime) -> None:
        super().__init__(f"plan limit reached until {resets_at.isoformat()}")
        self.resets_at = resets_at


@dataclass(frozen=True)
class Claimed:
    """What the scheduler read for a mailbox in the transaction that claimed it, so that a mailbox
    taken over (its history complete, live a moment ago elsewhere) goes online without a transaction
    of its own: its row, its folder cursors, and whether ``lead_recheck`` rows wait for it.  Used by
    the first session only; a reconnect or a retry reads them again."""

    row: Row[Any]
    cursors: Sequence[Row[Any]]
    rechecks: bool


@dataclass(frozen=True)
class Selected:
    """A message of a batch that leaves the service, with the event that carries it."""

    uid: int
    message_id: str
    kind: str
    event: EventBase


@dataclass(frozen=True)
class PreparedBatch:
    uids: list[int]
    selected: list[Selected]
    defects: list[tuple[int, list[str]]]
    reasons: dict[int, str]  # UID → why it was stored or not (sync/audit.py REASONS)
    # UID → Message-ID, of the messages that have one (recorded as keyed hashes)
    message_ids: dict[int, str]


@dataclass(frozen=True)
class ScannedHeaders:
    """UIDs whose headers were read and matched: the lead mail and bounce candidates among them
    ``wanted``."""

    uids: list[int]  # in scan order
    wanted: dict[int, tuple[FetchedHeader, HeaderSummary]]
    reasons: dict[int, str]
    message_ids: dict[int, str]
    directory: CompanyDirectory

    def split(self, size: int, max_bytes: int) -> list[ScannedHeaders]:
        """Consecutive runs of the UIDs (in scan order), each with at most ``size`` wanted of at
        most ``max_bytes`` together (their RFC822.SIZE; a larger message is a run's only one
        wanted): what a batch's bodies hold in memory is bounded by bytes, whatever the mailbox's
        attachments."""
        parts: list[ScannedHeaders] = []
        start = taken = held = 0
        for at, uid in enumerate(self.uids):
            found = self.wanted.get(uid)
            if found is not None:
                if taken == size or (taken and held + found[0].size > max_bytes):
                    parts.append(self._part(self.uids[start:at]))
                    start, taken, held = at, 0, 0
                taken += 1
                held += found[0].size
        parts.append(self._part(self.uids[start:]))
        return parts

    def _part(self, uids: list[int]) -> ScannedHeaders:
        return ScannedHeaders(
            uids,
            {uid: self.wanted[uid] for uid in uids if uid in self.wanted},
            {uid: self.reasons[uid] for uid in uids if uid in self.reasons},
            {uid: self.message_ids[uid] for uid in uids if uid in self.message_ids},
            self.directory,
        )


@dataclass(frozen=True)
class ReadBatch:
    """A batch as read from the server: headers matched, the bodies worth reading fetched, not
    parsed yet."""

    uids: list[int]
    wanted: dict[int, tuple[FetchedHeader, HeaderSummary]]  # lead mail and bounce candidates
    messages: list[FetchedMessage]
    reasons: dict[int, str]
    message_ids: dict[int, str]
    directory: CompanyDirectory


class _Laps:
    """Adds the time since the last lap to a stage of ``counter``."""

    def __init__(self, counter: Counter = STAGE_SECONDS) -> None:
        self.counter = counter
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.counter.labels(stage).inc(now - self.last)
        self.last = now


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _host(login: ServerLogin) -> str:
    return f"{login.host}:{login.port}"


def _message_id(summary: HeaderSummary, raw: bytes) -> str:
    """The Message-ID, or a stable stand-in for a message without one: a hash of its whole header
    block (``raw`` is the whole message; the header scan reads only some fields), so the same bytes
    give the same id."""
    if summary.message_id:
        return str(summary.message_id)[:900]
    header = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"  # as IMAP's BODY[HEADER] gives it
    return f"<{hashlib.sha256(header).hexdigest()[:40]}@no-message-id.leadline.invalid>"


class MailboxSync:
    def __init__(
        self,
        context: SyncContext,
        mailbox_id: uuid.UUID,
        busy: asyncio.Semaphore,
        db: Database,
        mode: SyncMode = SyncMode.LIVE,
        claimed: Claimed | None = None,
    ) -> None:
        """``busy`` and ``db`` are shared by the replica's workers: scans at once, and their queued
        database connections (the scheduler's); ``claimed``: what the claim read (its first session
        needs no transaction before it is live)."""
        self.context = context
        self.settings = context.settings
        self.mailbox_id = mailbox_id
        self.busy = busy
        self.db = db
        self.mode = mode
        self.row: Row[Any] | None = None
        self.cursors: dict[str, FolderCursor] = {}
        self.history_done = False
        self.synced_at: datetime | None = None  # the last_synced_at this worker wrote last
        self.refused: set[str] = set()  # folders whose rescan is refused for today: not synced
        self.refusal: str | None = None  # the status reason this worker set for them
        self.audit_due = False  # set by a reconnect after an outage
        # lead_recheck rows may wait for this mailbox: set by each session's start and by the
        # scheduler, which asks once for all its mailboxes (not every mailbox at every pass)
        self.rechecks_due = True
        # a live sync's last_synced_at, handed to the scheduler: its next lease renewal writes those
        # of all its live mailboxes in one statement
        self.synced_unwritten: datetime | None = None
        self.message_keys = audit.MessageKeys(self.settings.credential_keys())
        self.windows: dict[str, int] = {}  # history windows examined per folder in this worker
        # the stages of a session's start (START_SECONDS), until it is live
        self.laps: _Laps | None = None
        self.claimed = claimed

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync until the mailbox is given up, disabled or taken over, or (rotating) after one pass.

        A transient database error (no connection within ``sync_db_wait_seconds``, the server away
        or restarting, a lost connection) ends the IMAP session, not the worker: it waits
        (``DATABASE_RETRY``), still holding the lease, and starts again from the stored cursors, so
        whatever the failed transaction would have written is examined again (R26).
        """
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self._sync()
                return
            except Exception as error:
                if not transient(error):
                    raise
                # failures in a row; a worker that ran well for a while starts its backoff over
                failures = 1 if time.monotonic() - started > DATABASE_RETRY.cap else failures + 1
                delay = DATABASE_RETRY.seconds(failures - 1)
                DATABASE_RETRIES.labels(type(error).__name__).inc()
                log.warning(
                    "mailbox %s: the database failed (%s: %s); trying again in %.1f s",
                    self.mailbox_id,
                    type(error).__name__,
                    str(error).splitlines()[0][:200] if str(error) else "",
                    delay,
                )
                await asyncio.sleep(delay)

    async def _sync(self) -> None:
        laps = self.laps = _Laps(START_SECONDS)
        if self.claimed is not None:
            self.row = self.claimed.row
        else:
            async with self.db.session() as session:
                self.row = await mailboxes.mailbox_by_id(session, self.mailbox_id)
        laps.lap("row")
        row = self.row
        if row is None or row.status not in SYNCED or row.credential_ciphertext is None:
            return
        self.history_done = row.history_completed_at is not None
        try:
            login = self.context.cipher.imap_login(row)
        except CredentialError as exc:
            log.error("mailbox %s: %s", row.id, exc)
            await self._failed(
                MailConnectionError(ErrorKind.AUTH_FAILED, "The saved password could not be read."),
                kind=ErrorKind.CREDENTIALS_UNREADABLE,
            )
            return
        drops = refusals = 0
        reconnecting = False  # the last session dropped and no other session has failed since
        while True:
            try:
                await self._session(login)
                return  # a rotation pass ends after one round
            except LeaseLost:
                log.info("mailbox %s: lease lost or sync disabled; stopping", self.mailbox_id)
                return
            except PlanLimitReached as limit:
                await self._paused(limit.resets_at)
                return
            except SessionDropped as dropped:
                refusals, reconnecting = 0, True
                # Providers end long connections (Gmail after some minutes of IDLE): reconnect
                # quietly a few times before it counts as a failure.
                drops = (
                    0
                    if dropped.lasted > MAX_QUIET_RECONNECTS * QUIET_RECONNECT_SECONDS * 4
                    else drops + 1
                )
                if drops > MAX_QUIET_RECONNECTS:
                    await self._failed(dropped.error)
                    return
                log.info(
                    "mailbox %s: connection dropped (%s); reconnecting",
                    self.mailbox_id,
                    dropped.error.kind,
                )
                await asyncio.sleep(QUIET_RECONNECT.seconds(drops - 1))
            except MailConnectionError as error:
                if (
                    reconnecting
                    and error.kind in (ErrorKind.UNREACHABLE, ErrorKind.TIMEOUT)
                    and drops < MAX_QUIET_RECONNECTS
                ):
                    # a restarting server refuses connections for a moment: part of the same quiet
                    # reconnect
                    drops += 1
                    await asyncio.sleep(QUIET_RECONNECT.seconds(drops - 1))
                    continue
                if error.kind != ErrorKind.TOO_MANY_CONNECTIONS:
                    await self._failed(error)
                    return
                refusals += 1
                delay = self.context.logins.refused(_host(login), refusals)
                log.info(
                    "mailbox %s: %s refused a login for too many connections; retrying in %.0f s",
                    self.mailbox_id,
                    _host(login),
                    delay,
                )
                await self._refused(error)
                await asyncio.sleep(delay)

    async def _session(self, login: ServerLogin) -> None:  # noqa: C901 - 13, older than the limit
        """One IMAP connection: connect, then sync and wait for mail until something breaks.

        A rotation pass (``mode`` rotating) syncs both folders once and returns.
        """
        laps = self.laps or _Laps(START_SECONDS)  # (a reconnect starts its own)
        self.laps = None
        claimed, self.claimed = self.claimed, None
        client = await self._connect(login, laps)
        self.context.logins.succeeded(_host(login))
        # (rows that come after the claim's look are marked by the scheduler's next pass)
        self.rechecks_due = claimed.rechecks if claimed is not None else True
        loop = asyncio.get_running_loop()
        started = loop.time()
        push: str | None = None
        try:
            folders = await client.find_sync_folders()
            if self.row is not None and (
                self.row.status != MailboxStatus.ENABLED or self.row.failures
            ):
                # a reconnect after an outage: audit (also once a day, and after the history)
                self.audit_due = True
            await self._connected(fresh=claimed is not None)
            await self._load_cursors(claimed.cursors if claimed is not None else None)
            if not self.history_done:
                await self._await_directory()
            # Sent first, INBOX last: INBOX stays selected for IDLE.  While the history lasts
            # INBOX's window comes first (the newest mail a user waits for; most mail is there), and
            # the pass after the history's last ends with INBOX again, before any IDLE.
            roles: tuple[FolderRole, ...] = ("sent", "inbox")
            order = [(role, folders[role]) for role in roles if role in folders]
            watch = await self._watch(client, [name for _, name in order])
            if self.mode == SyncMode.LIVE:
                push = "notify" if watch.pushed else "idle" if watch.idle else "poll"
                LIVE.labels(push).inc()
            laps.lap("setup")
            SESSION_STARTS.inc()
            while True:
                await self._recheck_late_leads(client, order)
                news = client.take_news()
                history = any(
                    role not in self.cursors or self._history_pending(role) for role, _ in order
                )
                for role, name in order[::-1] if history else order:
                    if self._history_pending(role) or watch.due(
                        name, news, loop.time(), client.selected
                    ):
                        watch.checked(name, loop.time())
                        await self._sync_folder(client, role, name)
                await self._note_synced()
                await self._audit_if_due(client, order)
                if self.mode == SyncMode.ROTATING:
                    return
                wait = watch.wait_seconds(loop.time())
                if (
                    client.news
                    or wait <= 0
                    or history
                    or any(self._history_pending(role) for role, _ in order)
                ):
                    continue
                if watch.idle:
                    await client.idle(wait)
                else:
                    await asyncio.sleep(wait)
        except MailConnectionError as error:
            if (
                error.kind in (ErrorKind.UNREACHABLE, ErrorKind.TIMEOUT, ErrorKind.PROTOCOL)
                and client.closed
            ):
                self.audit_due = True
                raise SessionDropped(error, asyncio.get_running_loop().time() - started) from None
            raise
        finally:
            if push is not None:
                LIVE.labels(push).dec()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await client.logout()

    async def _connect(self, login: ServerLogin, laps: _Laps) -> ImapClient:
        signed_in = await self._signed_in(login)
        try:
            async with self.context.logins.slot(_host(login)):
                laps.lap("login_queue")
                client = await connect_imap(imap_settings(signed_in, self.settings))
                laps.lap("login")
                return client
        except MailConnectionError as error:
            if error.kind != ErrorKind.OAUTH_REFUSED or signed_in.access_token is None:
                raise
        # the server refused an access token before its expiry (revoked early): renew it and try
        # once more
        await self.context.tokens.refused(self.mailbox_id, signed_in.access_token)
        signed_in = await self._signed_in(login)
        async with self.context.logins.slot(_host(login)):
            return await connect_imap(imap_settings(signed_in, self.settings))

    async def _signed_in(self, login: ServerLogin) -> ServerLogin:
        """A mailbox signed in with OAuth2 connects with a live access token (renewed ahead of
        expiry)."""
        if self.row is None or self.row.auth != "oauth2":
            return login
        return replace(login, access_token=await self.context.tokens.access_token(self.mailbox_id))

    async def _watch(self, client: ImapClient, folders: list[str]) -> FolderWatch:
        """Ask the server to push changes of every folder (NOTIFY) where it can; the rest is
        polled."""
        idle = "IDLE" in client.capabilities
        # pushed news is read during IDLE only
        pushed = (
            idle
            and self.mode == SyncMode.LIVE
            and self.settings.sync_notify
            and await client.notify(folders)
        )
        return FolderWatch(
            idle_folder="INBOX",
            pushed=pushed,
            idle=idle,
            poll_seconds=self.settings.sync_poll_seconds,
            unpushed_poll_seconds=self.settings.sync_sent_poll_seconds,
        )

    # -- status ----------------------------------------------------------------------------

    async def _connected(self, *, fresh: bool = False) -> None:
        """The mailbox is ``enabled`` with no reason or failure shown, once a session is up.
        ``fresh``: ``self.row`` was read by the claim a moment ago; a row that shows that already
        needs no transaction (a later change, a disable, fails the next fence or the scheduler's
        renewal stops the worker)."""
        row = self.row
        if fresh and row is not None and not self._needs_enabling(row):
            return
        now = self.context.clock()
        async with self.db.session() as session:
            row = await self._fence(session)
            if self._needs_enabling(row):
                await service.transition(session, row, MailboxStatus.ENABLED, "", now)

    @staticmethod
    def _needs_enabling(row: Row[Any]) -> bool:
        return bool(
            row.status != MailboxStatus.ENABLED
            or row.status_reason
            or row.failures
            or row.failing_since is not None
        )

    async def _failed(self, error: MailConnectionError, kind: ErrorKind | None = None) -> None:
        kind = kind or error.kind
        FAILURES.labels(kind).inc()
        log.warning(
            "mailbox %s: connection failed (%s): %s", self.mailbox_id, kind, error.detail or kind
        )
        now = self.context.clock()
        async with self.db.session() as session:
            try:
                row = await self._fence(session)
            except LeaseLost:
                return
            failing_since = row.failing_since or now
            await service.record_error(session, row, kind, error.user_message, now)
            if (now - failing_since).total_seconds() >= self.settings.sync_give_up_hours * 3600:
                await service.record_error(
                    session,
                    row,
                    ErrorKind.CONNECTION_FAILED,
                    "Mail Sync could not connect for two days and stopped trying.",
                    now,
                )
                await service.transition(
                    session,
                    row,
                    MailboxStatus.CONNECTION_FAILED,
                    (
                        f"no successful connection since {failing_since:%Y-%m-%d %H:%M} UTC: "
                        f"{error.user_message}"
                    ),
                    now,
                )
                return
            retry = Backoff(
                self.settings.sync_retry_base_seconds, self.settings.sync_retry_max_seconds
            )
            delay = timedelta(seconds=retry.seconds(row.failures))
            await service.transition(
                session,
                row,
                MailboxStatus.ERROR,
                error.user_message,
                now,
                failing_since=failing_since,
                retry_at=now + delay,
            )

    async def _refused(self, error: MailConnectionError) -> None:
        """The server refused us for too many connections: say so (once), but nothing is wrong with
        the mailbox."""
        async with self.db.session() as session:
            row = await self._fence(session)
            if row.status_reason != error.user_message:
                now = self.context.clock()
                await service.record_error(session, row, error.kind, error.user_message, now)
                await service.transition(
                    session, row, MailboxStatus(row.status), error.user_message, now
                )

    async def _paused(self, resets_at: datetime) -> None:
        """Stop until the plan's daily allowance renews; the cursor stays before the first mail not
        stored."""
        now = self.context.clock()
        message = (
            f"The plan's daily limit of synced emails is reached; sync resumes at "
            f"{resets_at:%Y-%m-%d %H:%M} UTC."
        )
        async with self.db.session() as session:
            try:
                row = await self._fence(session)
            except LeaseLost:
                return
            if row.status_reason != message:
                await service.record_error(session, row, ErrorKind.PLAN_LIMIT, message, now)
            await service.transition(
                session, row, MailboxStatus(row.status), message, now, retry_at=resets_at
            )

    async def _allowance(self, count: int) -> tuple[int, datetime | None]:
        """How many of ``count`` new lead emails the plan lets us store now (R14).

        Without an answer the mail is stored: the plan limit is billing, and a
        quota service outage must not stop every mailbox from syncing.
        """
        row = self.row
        assert row is not None
        request = SyncAllowanceRequest(company_id=row.company_id, user_id=row.user_id, count=count)
        try:
            reply = await rpc.ask(
                self.context.nc,
                RPC_SYNC_ALLOWANCE,
                request,
                SyncAllowanceReply,
                self.settings.rpc_timeout_seconds,
            )
        except rpc.Unanswered as exc:
            log.warning(
                "mailbox %s: plan allowance not answered (%s); storing the mail", row.id, exc.reason
            )
            return count, None
        return max(0, min(count, reply.allowed)), reply.resets_at

    async def _fence(self, session: AsyncSession) -> Row[Any]:
        """Lock our mailbox row, and make sure we still hold its lease and it is still to be
        synced."""
        row = await repository.fence_mailbox(session, self.mailbox_id, self.context.replica)
        if row is None:
            raise LeaseLost
        self.row = row
        return row

    # -- leads that arrive late ------------------------------------------------------------

    async def _await_directory(self) -> None:
        """Hold the historical sync until our copy of the company's leads is as complete as the lead
        service's.

        The lead service answers how many leads with addresses the company has (as of its clock);
        the wait ends when as many created up to then reached us, or after
        ``sync_directory_wait_seconds`` (logged: the late ones are then found by their rechecks).
        """
        row = self.row
        assert row is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.sync_directory_wait_seconds
        reply: LeadDirectoryReply | None = None
        waiting = ""
        have = 0
        while True:
            if reply is None:
                reply = await self._ask_directory()
            if reply is not None and reply.as_of is not None:
                async with self.db.session() as session:
                    have = await repository.leads_known(session, row.company_id, reply.as_of)
                if have >= reply.leads:
                    DIRECTORY_WAITS.labels("caught_up" if waiting else "ready").inc()
                    break
            if loop.time() >= deadline:
                DIRECTORY_WAITS.labels("timed_out").inc()
                known = f"{have} of {reply.leads}" if reply is not None else "an unknown number of"
                log.warning(
                    "mailbox %s: started the historical sync knowing %s leads",
                    self.mailbox_id,
                    known,
                )
                async with self.db.session() as session:
                    current = await self._fence(session)
                    await service.record_error(
                        session,
                        current,
                        ErrorKind.LEADS_BEHIND,
                        f"The historical sync started before Mail Sync had heard of every lead "
                        f"({known} leads); "
                        "mail of the leads that arrive later is looked for again when they do.",
                        self.context.clock(),
                    )
                break
            want = f" ({have} of {reply.leads})" if reply is not None else ""
            reason = f"Waiting for the company's leads{want} before reading the mail history."
            if reason != waiting:
                log.info("mailbox %s: %s", self.mailbox_id, reason)
                async with self.db.session() as session:
                    current = await self._fence(session)
                    await service.transition(
                        session,
                        current,
                        MailboxStatus(current.status),
                        reason,
                        self.context.clock(),
                    )
                waiting = reason
            await asyncio.sleep(DIRECTORY_POLL_SECONDS)
        if waiting:
            async with self.db.session() as session:
                current = await self._fence(session)
                if current.status_reason == waiting:
                    await service.transition(
                        session, current, MailboxStatus(current.status), "", self.context.clock()
                    )

    async def _ask_directory(self) -> LeadDirectoryReply | None:
        row = self.row
        assert row is not None
        request = LeadDirectoryRequest(company_id=row.company_id)
        try:
            return await rpc.ask(
                self.context.nc,
                RPC_LEAD_DIRECTORY,
                request,
                LeadDirectoryReply,
                self.settings.rpc_timeout_seconds,
            )
        except rpc.Unanswered as exc:
            log.info("mailbox %s: lead count not answered (%s); asking again", row.id, exc.reason)
            await asyncio.sleep(DIRECTORY_POLL_SECONDS)
            return None

    async def _recheck_late_leads(
        self, client: ImapClient, order: Sequence[tuple[FolderRole, str]]
    ) -> None:
        """Examine again the mail, up to each cursor, that names a lead which reached us after it
        was examined."""
        if not self.rechecks_due:
            return
        self.rechecks_due = False  # (the scheduler sets it again for a row that comes meanwhile)
        async with self.db.session() as session:
            rechecks = await repository.rechecks_of(session, self.mailbox_id, RECHECKS_PER_PASS)
        if not rechecks:
            return
        if len(rechecks) == RECHECKS_PER_PASS:
            self.rechecks_due = True  # more wait: the next pass takes them
        for role, name in order:
            cursor = self.cursors.get(role)
            if cursor is None or cursor.last_uid == 0 or cursor.name != name:
                continue  # nothing examined yet: the scan sees the lead
            status = await client.select(name)
            if status.uidvalidity != cursor.uidvalidity:
                continue  # renumbered: the rescan reads everything again
            uids: set[int] = set()
            for recheck in rechecks:
                since = (
                    recheck.since.date() - timedelta(days=1) if recheck.since is not None else None
                )
                found = await client.uids_mentioning(
                    recheck.addresses, up_to=cursor.last_uid, since=since
                )
                # below: the history sees the lead
                uids.update(uid for uid in found if uid >= cursor.history_floor)
            if uids:
                RECHECKED.labels(role).inc(len(uids))
                log.info(
                    "mailbox %s: examining %d %s messages again for leads that arrived late",
                    self.mailbox_id,
                    len(uids),
                    role,
                )
                await self._scan(client, cursor, sorted(uids))
        async with self.db.session() as session:
            await self._fence(session)
            for recheck in rechecks:
                # a row updated meanwhile (new addresses) stays for the next pass
                await repository.delete_recheck(
                    session, self.mailbox_id, recheck.lead_id, recheck.created_at
                )

    # -- the completeness audit ------------------------------------------------------------

    async def _audit_if_due(
        self, client: ImapClient, order: Sequence[tuple[FolderRole, str]]
    ) -> None:
        """Compare each folder's UIDs on the server with what was examined; examine what never
        was."""
        now = self.context.clock()
        stale = any(
            c.audited_at is None or now - c.audited_at >= AUDIT_EVERY for c in self.cursors.values()
        )
        if not self.history_done or not (self.audit_due or stale):
            return
        self.audit_due = False
        for role, name in order:
            cursor = self.cursors.get(role)
            if cursor is None or cursor.name != name:
                continue
            status = await client.select(name)
            if status.uidvalidity != cursor.uidvalidity:
                continue  # renumbered: the next pass reads it again
            found = 0
            async for missing in audit.unexamined(
                client,
                self.db,
                self.mailbox_id,
                role,
                cursor.uidvalidity,
                cursor.last_uid,
                status.uidnext,
            ):
                found += len(missing)
                await self._scan(client, cursor, missing)
            AUDITS.labels(role).inc()
            REFETCHED.labels(role).inc(found)
            cursor.audited_at = now
            async with self.db.session() as session:
                row = await self._fence(session)
                await repository.write_audited(session, self.mailbox_id, role, now, found)
                if found:
                    log.error(
                        (
                            "mailbox %s: the audit of %s found %d messages never examined; "
                            "examined them now"
                        ),
                        self.mailbox_id,
                        role,
                        found,
                    )
                    await service.record_error(
                        session,
                        row,
                        ErrorKind.AUDIT_REPAIRED,
                        f"The completeness audit of {role} found {found} messages that had never "
                        "been examined; they were examined now and their lead mail is on the "
                        "timeline.",
                        now,
                    )
        inbox = dict(order).get("inbox")
        if inbox is not None:
            await client.select(inbox)  # IDLE watches INBOX

    # -- cursors ---------------------------------------------------------------------------

    async def _load_cursors(self, rows: Sequence[Row[Any]] | None = None) -> None:
        """The stored cursors (``rows``: as the claim read them)."""
        if rows is None:
            async with self.db.session() as session:
                rows = await mailboxes.folder_cursors(session, self.mailbox_id)
        self.cursors = {
            r.folder: FolderCursor(
                r.folder,
                r.name,
                r.uidvalidity,
                r.last_uid,
                r.highestmodseq,
                r.uidnext,
                r.history_last_uid,
                r.uidvalidity_resets,
                _aware(r.uidvalidity_resets_since),
                _aware(r.rescan_refused_at),
                _aware(r.audited_at),
                r.history_floor,
            )
            for r in rows
        }

    async def _save_cursor(self, session: AsyncSession, cursor: FolderCursor) -> None:
        await repository.save_cursor(session, self.mailbox_id, cursor)

    async def _note_synced(self) -> None:
        """Both folders are synced to the end: record when, and (once) that the historical sync is
        complete.

        A live mailbox records it at most every quarter of the rotation period,
        and through the scheduler (its next lease renewal writes those of all its
        live mailboxes in one statement), so that thousands of idle mailboxes do
        not write a row a minute each; a folder whose rescan was refused today
        leaves the mailbox not synced.
        """
        now = self.context.clock()
        history_done = not self.history_done and all(
            c.last_uid >= c.history_last_uid and not c.history_pending
            for c in self.cursors.values()
        )
        recent = (
            self.synced_at is not None
            and (now - self.synced_at).total_seconds() < self.settings.sync_rotation_seconds / 4
        )
        synced = not self.refused and not recent
        lifted = not self.refused and self.refusal is not None  # a refused folder was read again
        if not (history_done or synced or lifted):
            return
        if self.mode == SyncMode.LIVE and not (history_done or lifted):
            self.synced_unwritten = self.synced_at = now
            return
        async with self.db.session() as session:
            row = await self._fence(session)
            if lifted:
                if row.status_reason == self.refusal:
                    await service.transition(session, row, MailboxStatus(row.status), "", now)
                self.refusal = None
            if synced:
                await repository.write_synced_at(session, self.mailbox_id, now)
            if history_done:
                await repository.complete_history(session, self.mailbox_id, now)
        if synced:
            self.synced_at = now
        if history_done:
            self.history_done = True
            log.info("mailbox %s: historical sync complete", self.mailbox_id)

    # -- one folder ------------------------------------------------------------------------

    async def _sync_folder(self, client: ImapClient, role: FolderRole, name: str) -> None:
        cursor = self.cursors.get(role)
        if role != "inbox" and cursor is not None and cursor.name == name:
            # cheap poll of a folder we do not IDLE on
            if decide(cursor, await client.status(name)).action is FolderAction.NONE:
                return
        status = await client.select(name)
        action, reason = decide(cursor, status)
        log.debug("mailbox %s: %s %s: %s", self.mailbox_id, role, action, reason)
        if action in (FolderAction.BEGIN, FolderAction.RESCAN):
            cursor = await self._new_cursor(role, cursor, status)
            if cursor is None:
                return  # renumbered too often today: not read again until the day ends (logged)
            action, _ = decide(cursor, status)
        assert cursor is not None  # decide() begins a folder that has none
        self.refused.discard(role)
        if action is FolderAction.SCAN:
            await self._scan(client, cursor, await client.uids_from(cursor.last_uid + 1))
        if cursor.advance(status):
            async with self.db.session() as session:
                await self._fence(session)
                await self._save_cursor(session, cursor)
        if cursor.history_pending:
            await self._history_window(client, cursor, whole=self.mode == SyncMode.ROTATING)

    def _history_pending(self, role: FolderRole) -> bool:
        cursor = self.cursors.get(role)
        return cursor is not None and cursor.history_pending and role not in self.refused

    async def _history_window(
        self, client: ImapClient, cursor: FolderCursor, *, whole: bool
    ) -> None:
        """Examine the history below the floor newest first: one window of UIDs (``whole``: all of
        it).

        Each batch's commit lowers the floor to its lowest UID (sync/_commit), so a killed sync
        resumes below the last batch stored; a UID of the window the server no longer has was
        expunged, and the floor passes it once the window is done.
        """
        while cursor.history_pending:
            # the first windows are small (the newest mail of both folders first), later ones
            # larger: a window's end drains the scan's pipeline
            passes = self.windows.get(cursor.folder, 0)
            self.windows[cursor.folder] = passes + 1
            low = max(
                1,
                cursor.history_floor
                - (self.settings.sync_history_window << min(passes, WINDOW_GROWTH)),
            )
            uids = await client.uids_between(low, cursor.history_floor - 1)
            # the newest mail of a history not begun reaches the timelines after a small batch, not
            # a full one
            first = FIRST_HISTORY_BATCH if cursor.history_floor > cursor.history_last_uid else None
            if uids:
                await self._scan(
                    client, cursor, sorted(uids, reverse=True), history=True, first_batch=first
                )
            if cursor.history_floor != low:
                # the window's lowest UIDs were expunged: the floor passes them
                cursor.history_floor = low
                async with self.db.session() as session:
                    await self._fence(session)
                    await self._save_cursor(session, cursor)
            if uids and not whole:
                # the other folder's newest mail, and mail arriving now, come before older history
                return

    async def _new_cursor(
        self, role: FolderRole, cursor: FolderCursor | None, status: FolderStatus
    ) -> FolderCursor | None:
        """A new cursor after SELECT, for a folder without one or renumbered
        (:data:`FolderAction.RESCAN`).

        None when the folder was renumbered more than ``sync_max_resets_per_day``
        times within a day: it is not rescanned again until that day ends.
        """
        now = self.context.clock()
        if cursor is not None and not rescan_allowed(
            cursor, now, self.settings.sync_max_resets_per_day
        ):
            await self._rescan_refused(cursor, now)
            return None
        reset = cursor is not None
        # the history (UIDs that exist now) is examined newest first, below the floor; last_uid is
        # the cursor of the mail that arrives from now on
        fresh = FolderCursor(
            folder=role,
            name=status.name,
            uidvalidity=status.uidvalidity,
            last_uid=status.uidnext - 1,
            highestmodseq=None,
            uidnext=0,
            history_last_uid=status.uidnext - 1,
            history_floor=max(1, status.uidnext),
        )
        if cursor is not None:
            fresh.resets, fresh.resets_since = cursor.resets, cursor.resets_since
            if self.history_done:
                # a renumbered folder after the historical sync is live mail, oldest first
                fresh.last_uid, fresh.history_last_uid, fresh.history_floor = 0, 0, 1
        async with self.db.session() as session:
            row = await self._fence(session)
            await self._save_cursor(session, fresh)
            await audit.forget_other_uidvalidities(
                session, self.mailbox_id, role, status.uidvalidity
            )
            if reset:
                log.warning("mailbox %s: %s UIDVALIDITY changed; rescanning", self.mailbox_id, role)
                await service.record_error(
                    session,
                    row,
                    ErrorKind.FOLDER_RESET,
                    f"The server renumbered the {role} folder; it was read again.",
                    now,
                )
        self.cursors[role] = fresh
        return fresh

    async def _rescan_refused(self, cursor: FolderCursor, now: datetime) -> None:
        """Say once a day (error log) and in the status reason that a folder is not rescanned again
        today."""
        assert cursor.resets_since is not None
        until = cursor.resets_since + RESCAN_DAY
        message = (
            f"The server renumbered the {cursor.folder} folder again after "
            f"{self.settings.sync_max_resets_per_day} rescans within a day; it is not read again "
            f"until {until:%Y-%m-%d %H:%M} UTC."
        )
        async with self.db.session() as session:
            row = await self._fence(session)
            if cursor.rescan_refused_at is None or cursor.rescan_refused_at < cursor.resets_since:
                cursor.rescan_refused_at = now
                await self._save_cursor(session, cursor)
                await service.record_error(session, row, ErrorKind.FOLDER_RESET_LIMIT, message, now)
                log.warning(
                    "mailbox %s: %s UIDVALIDITY changed again; rescan refused until %s",
                    self.mailbox_id,
                    cursor.folder,
                    until.isoformat(),
                )
            if row.status_reason != message:
                await service.transition(session, row, MailboxStatus(row.status), message, now)
        self.refused.add(cursor.folder)
        self.refusal = message

    async def _scan(
        self,
        client: ImapClient,
        cursor: FolderCursor,
        uids: Sequence[int],
        *,
        history: bool = False,
        first_batch: int | None = None,
    ) -> None:
        """Batches through three stages at once: reading batch n+2 (IMAP), parsing n+1 (the parser
        processes) and storing n (the database), stored in the order of ``uids`` (``history``:
        descending UIDs below the floor, which each batch lowers).  ``first_batch``: a smaller first
        batch, stored sooner.

        Headers are read and matched :data:`HEADER_CHUNK` at a time; a batch is as many of them, in
        order, as hold ``sync_batch_size`` bodies to read, so that mail of no lead costs one FETCH
        of headers, one directory query and a share of one transaction per chunk, not a batch
        each."""
        if not uids:
            return
        size, max_bytes = self.settings.sync_batch_size, self.settings.sync_batch_bytes
        first = min(first_batch or HEADER_CHUNK, HEADER_CHUNK)
        edges = [0, *range(first, len(uids), HEADER_CHUNK), len(uids)]
        # each parses its batch, waits for the one before, stores
        pending: list[asyncio.Task[None]] = []
        try:
            for start, end in itertools.pairwise(edges):
                async with self.busy:
                    scanned = await self._read_headers(client, cursor, uids[start:end])
                for part in scanned.split(size, max_bytes):
                    self.context.parser.expect(len(part.wanted))
                    async with self.busy:
                        read = await self._read_bodies(client, part)
                    previous = pending[-1] if pending else None
                    pending.append(
                        asyncio.create_task(self._parse_and_store(cursor, read, previous, history))
                    )
                    del read  # the task's alone: it lets go of the bodies once they are parsed
                    while len(pending) > 2 or (pending and pending[0].done()):
                        await pending.pop(0)
            while pending:
                await pending.pop(0)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                for task in pending:
                    task.cancel()
            # a batch being stored finishes (or rolls back) before the error goes up
            await asyncio.gather(*pending, return_exceptions=True)
            raise

    async def _parse_and_store(
        self,
        cursor: FolderCursor,
        read: ReadBatch,
        previous: asyncio.Task[None] | None,
        history: bool,
    ) -> None:
        batch = await self._finish(cursor, read)
        # its bodies: parsed, and not kept while the batch waits for its turn and is stored
        del read
        if previous is not None:
            await previous  # batches are stored in order; a failed one fails the ones after it
        await self._store(cursor, batch, history)

    async def _read_headers(
        self, client: ImapClient, cursor: FolderCursor, uids: Sequence[int]
    ) -> ScannedHeaders:
        row = self.row
        assert row is not None
        laps = _Laps()
        headers = await client.fetch_headers(uids, SUMMARY_FIELDS)
        laps.lap("imap_headers")
        SCANNED.labels(cursor.folder).inc(len(headers))
        summaries = [(h, parse_headers(h.header)) for h in headers]
        laps.lap("header_parse")
        addresses = {a for _, s in summaries for a in self._parties(s).counterparts(row.address)}
        async with self.db.session() as session:
            directory = await load_directory(session, row.company_id, addresses)
        wanted: dict[int, tuple[FetchedHeader, HeaderSummary]] = {}
        reasons = dict.fromkeys(uids, "gone")
        message_ids = {h.uid: s.message_id for h, s in summaries if s.message_id}
        for header, summary in summaries:
            parties, sent_at = self._parties(summary), self._sent_at(header, summary)
            if (
                match_message(
                    parties,
                    folder=cursor.folder,
                    own_address=row.address,
                    sent_at=sent_at,
                    connected_at=row.connected_at,
                    directory=directory,
                )
                is not None
            ):
                reasons[header.uid] = "lead_mail"
                wanted[header.uid] = (header, summary)
                continue
            reasons[header.uid] = unmatched_reason(
                parties, own_address=row.address, directory=directory
            )
            if cursor.folder == "inbox" and summary.is_bounce_candidate:
                wanted[header.uid] = (header, summary)
        laps.lap("match")
        return ScannedHeaders(list(uids), wanted, reasons, message_ids, directory)

    async def _read_bodies(self, client: ImapClient, part: ScannedHeaders) -> ReadBatch:
        laps = _Laps()
        messages = await client.fetch_messages(list(part.wanted)) if part.wanted else []
        laps.lap("imap_bodies")
        return ReadBatch(
            part.uids, part.wanted, messages, part.reasons, part.message_ids, part.directory
        )

    async def _finish(self, cursor: FolderCursor, read: ReadBatch) -> PreparedBatch:
        """Bounces recognised, lead mail parsed (in the parser processes) and made events."""
        row = self.row
        assert row is not None
        laps = _Laps()
        uids, wanted, messages, reasons, directory = (
            read.uids,
            read.wanted,
            read.messages,
            read.reasons,
            read.directory,
        )
        selected: list[Selected] = []
        defects: list[tuple[int, list[str]]] = []
        if wanted:
            notices: dict[int, Bounce | Complaint] = {}
            for message in messages:
                if cursor.folder == "inbox" and wanted[message.uid][1].is_bounce_candidate:
                    notice = parse_notice(message.raw)
                    if notice is not None:
                        notices[message.uid] = notice
            named = {a for n in notices.values() for a in (*n.recipients, *n.original_to)} - set(
                directory.lead_since
            )
            if named:
                async with self.db.session() as session:
                    found = await load_directory(session, row.company_id, named)
                directory.lead_since.update(found.lead_since)
                directory.blocked_addresses.update(found.blocked_addresses)
            matched: list[tuple[FetchedMessage, Match]] = []
            for message in messages:
                header, summary = wanted[message.uid]
                notice = notices.get(message.uid)
                if notice is not None:
                    # a notice is about mail sent to a lead, or names no recipient (a complaint: no
                    # lead, as reports redact it) but returns a message's Message-ID (its sender
                    # knows the recipients); any other is nobody's business here
                    lead = notice.lead_recipient(directory.is_lead, own_addresses=(row.address,))
                    if lead is not None or (
                        notice.original_message_id
                        and (isinstance(notice, Complaint) or not notice.recipients)
                    ):
                        selected.append(self._notice(header, summary, message.raw, notice, lead))
                        continue
                match = match_message(
                    self._parties(summary),
                    folder=cursor.folder,
                    own_address=row.address,
                    sent_at=self._sent_at(header, summary),
                    connected_at=row.connected_at,
                    directory=directory,
                )
                if match is not None:
                    matched.append((message, match))
            laps.lap("bounce_parse")
            parsed = await self.context.parser.parse([message.raw for message, _ in matched])
            laps.lap("mime_parse")
            for (message, match), parsed_message in zip(matched, parsed, strict=True):
                header, summary = wanted[message.uid]
                if parsed_message.defects:
                    defects.append((message.uid, parsed_message.defects))
                selected.append(
                    self._mail(cursor.folder, header, summary, message.raw, match, parsed_message)
                )
            selected.sort(key=lambda s: s.uid)
            fetched = {message.uid for message in messages}
            reasons.update((uid, "gone") for uid in wanted if uid not in fetched)
            laps.lap("events")
        reasons.update((s.uid, "lead_mail" if s.kind == "mail" else s.kind) for s in selected)
        reasons.update((uid, "damaged_lead_mail") for uid, _ in defects)
        return PreparedBatch(list(uids), selected, defects, reasons, read.message_ids)

    async def _store(self, cursor: FolderCursor, batch: PreparedBatch, history: bool) -> None:
        # bounded like the preparing, so that hundreds of mailboxes never queue for more connections
        # than the pool has
        async with self.busy:
            laps = _Laps()
            await self._store_batch(cursor, batch, history)
            laps.lap("commit")

    async def _store_batch(self, cursor: FolderCursor, batch: PreparedBatch, history: bool) -> None:
        uids, selected, defects = batch.uids, batch.selected, batch.defects
        mail = sorted(
            (s for s in selected if s.kind == "mail"), key=lambda s: s.uid, reverse=history
        )
        if mail:
            allowed, resets_at = await self._allowance(len(mail))
            if allowed < len(mail):
                # the first lead mail (in scan order) the plan does not allow today
                cutoff = mail[allowed].uid

                def before(uid: int) -> bool:
                    return uid > cutoff if history else uid < cutoff

                kept = [u for u in uids if before(u)]
                await self._commit(
                    cursor,
                    kept or [cursor.history_floor if history else cursor.last_uid],
                    [s for s in selected if before(s.uid)],
                    [d for d in defects if before(d[0])],
                    batch.reasons,
                    batch.message_ids,
                    history,
                )
                raise PlanLimitReached(resets_at or self.context.clock())
        await self._commit(
            cursor, uids, selected, defects, batch.reasons, batch.message_ids, history
        )

    def _parties(self, summary: HeaderSummary) -> Parties:
        return Parties(
            from_address=summary.from_address,
            to=list(summary.to),
            cc=list(summary.cc),
            bcc=list(summary.bcc),
        )

    def _sent_at(self, header: FetchedHeader, summary: HeaderSummary) -> datetime:
        return _aware(summary.date) or _aware(header.internaldate) or self.context.clock()

    def _notice(
        self,
        header: FetchedHeader,
        summary: HeaderSummary,
        raw: bytes,
        notice: Bounce | Complaint,
        lead: str | None,
    ) -> Selected:
        row = self.row
        assert row is not None
        if isinstance(notice, Complaint):
            return Selected(
                header.uid,
                _message_id(summary, raw),
                "complaint",
                MailComplainedV1(
                    company_id=row.company_id,
                    correlation_id=str(row.id),
                    payload=MailComplainedPayload(
                        original_message_id=notice.original_message_id or "",
                        recipient=lead or "",
                        feedback_type=notice.feedback_type,
                        reporter=notice.reporter,
                        mailbox_id=row.id,
                        user_id=row.user_id,
                        complained_at=self._sent_at(header, summary),
                    ),
                ),
            )
        bounce = notice
        return Selected(
            header.uid,
            _message_id(summary, raw),
            "bounce",
            MailBouncedV1(
                company_id=row.company_id,
                correlation_id=str(row.id),
                payload=MailBouncedPayload(
                    original_message_id=bounce.original_message_id or "",
                    recipient=lead or "",
                    status=bounce.status,
                    action=bounce.action,
                    severity=bounce.severity,
                    reason=bounce.reason,
                    diagnostic=bounce.diagnostic[:2000] if lead else "",
                    mailbox_id=row.id,
                    user_id=row.user_id,
                    bounced_at=self._sent_at(header, summary),
                ),
            ),
        )

    def _mail(
        self,
        folder: FolderRole,
        header: FetchedHeader,
        summary: HeaderSummary,
        raw: bytes,
        match: Match,
        parsed: ParsedMessage,
    ) -> Selected:
        row = self.row
        assert row is not None
        message_id = _message_id(summary, raw)
        return Selected(
            header.uid,
            message_id,
            "mail",
            MailSyncedV1(
                company_id=row.company_id,
                correlation_id=str(row.id),
                payload=MailPayload(
                    message_id=message_id,
                    mailbox_id=row.id,
                    user_id=row.user_id,
                    folder=folder,
                    direction=match.direction,
                    from_address=summary.from_address or "",
                    from_name=summary.from_name or "",
                    to=match.to,
                    cc=match.cc,
                    subject=summary.subject or "",
                    sent_at=self._sent_at(header, summary),
                    text=parsed.text,  # what parse_all keeps of it: the preview's
                    html=parsed.html,
                    attachments=[
                        Attachment(filename=a.filename, content_type=a.content_type, size=a.size)
                        for a in parsed.attachments
                    ],
                    in_reply_to=summary.in_reply_to,
                    defect=bool(parsed.defects),
                ),
            ),
        )

    async def _commit(
        self,
        cursor: FolderCursor,
        uids: Sequence[int],
        selected: list[Selected],
        defects: list[tuple[int, list[str]]],
        reasons: Mapping[int, str],
        message_ids: Mapping[int, str],
        history: bool = False,
    ) -> None:
        """Rows, events, the examined UIDs and the cursor of one batch in one transaction, under the
        lease (R26).

        A batch of the history (newest first) lowers the floor to its lowest UID and leaves last_uid
        alone.
        """
        now = self.context.clock()
        async with self.db.session() as session:
            row = await self._fence(session)
            published: set[int] = set()
            if selected:
                published = await repository.record_synced(
                    session,
                    row.id,
                    cursor.folder,
                    cursor.uidvalidity,
                    [s.uid for s in selected],
                    [s.message_id for s in selected],
                    [s.kind for s in selected],
                    [s.event.event_id for s in selected],
                )
                events = [s.event for s in selected if s.uid in published]
                await enqueue(session, outbox, *events)
                for s in selected:
                    if s.uid in published:
                        PUBLISHED.labels(s.kind).inc()
            for uid, problems in defects:
                if uid in published:
                    log.warning(
                        "mailbox %s: %s UID %d kept with defects: %s",
                        row.id,
                        cursor.folder,
                        uid,
                        "; ".join(problems)[:500],
                    )
                    await service.record_error(
                        session,
                        row,
                        ErrorKind.MESSAGE_UNREADABLE,
                        f"A message in {cursor.folder} (UID {uid}) could not be fully read and was "
                        f"kept as received: {'; '.join(problems)[:300]}",
                        now,
                    )
            await audit.record_examined(
                session,
                row.id,
                cursor.folder,
                cursor.uidvalidity,
                {uid: reasons[uid] for uid in uids if uid in reasons},
            )
            await audit.record_messages(
                session,
                self.message_keys,
                row.id,
                cursor.folder,
                cursor.uidvalidity,
                {uid: message_ids[uid] for uid in uids if uid in message_ids},
            )
            if history:
                cursor.history_floor = min(cursor.history_floor, min(uids))
            else:
                cursor.last_uid = max(cursor.last_uid, max(uids))
            await self._save_cursor(session, cursor)
