"""Metrics about every replica's mailboxes, computed from the database so that they are true across
replicas.

Each replica exports the same values (take ``max`` across instances): how many
mailboxes are in each status, how the enabled ones are synced (``live`` or
``rotating``), how long the least recently synced enabled mailbox has waited,
and how many have waited longer than ``LEADLINE_SYNC_ROTATION_SECONDS``
(R28: what the system is not doing is visible); and how many synced
mailboxes' last completeness audit of a folder found messages never
examined (issue 25: it examined them then; a gap is a fault to look into).  Mailboxes paused until a
later attempt (the plan's daily limit) are not waiting for sync capacity and
are left out of the last two.
"""

from __future__ import annotations

from prometheus_client import Gauge

from leadline_sync.context import SyncContext
from leadline_sync.mailbox import repository
from leadline_sync.mailbox.states import MailboxStatus, SyncMode

REPORT_SECONDS = 1.0

MAILBOXES = Gauge("leadline_sync_mailboxes", "Mailboxes by status (all replicas)", ["status"])
ENABLED = Gauge(
    "leadline_sync_enabled_mailboxes",
    "Enabled mailboxes by how they are synced: live (IDLE held) or rotating (served in turns)",
    ["sync_mode"],
)
OLDEST_SYNC_AGE = Gauge(
    "leadline_sync_oldest_sync_age_seconds",
    "Seconds since the least recently synced enabled mailbox was synced (or connected)",
)
OVERDUE = Gauge(
    "leadline_sync_overdue_mailboxes",
    "Enabled mailboxes not synced within LEADLINE_SYNC_ROTATION_SECONDS",
)
WITH_AUDIT_GAPS = Gauge(
    "leadline_sync_mailboxes_with_missing",
    (
        "Synced mailboxes whose last completeness audit of a folder found messages never examined "
        "(all replicas)"
    ),
)


async def report_mailboxes(context: SyncContext) -> None:
    now = context.clock()
    async with context.db.session() as session:
        counts = await repository.mailbox_counts(
            session, now, context.settings.sync_rotation_seconds
        )
        gaps = await repository.mailboxes_with_audit_gaps(session)
    for status in MailboxStatus:
        MAILBOXES.labels(status).set(sum(c.mailboxes for c in counts if c.status == status))
    enabled = [c for c in counts if c.status == MailboxStatus.ENABLED]
    for mode in SyncMode:
        ENABLED.labels(mode).set(sum(c.mailboxes for c in enabled if c.sync_mode == mode))
    oldest = min((c.waiting_since for c in enabled if c.waiting_since is not None), default=None)
    OLDEST_SYNC_AGE.set(0 if oldest is None else max(0.0, (now - oldest).total_seconds()))
    OVERDUE.set(sum(c.overdue for c in enabled))
    WITH_AUDIT_GAPS.set(gaps)
