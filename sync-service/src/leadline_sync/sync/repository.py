"""Every query of the completeness audit (``audit.py`` holds its range arithmetic): the
``examined_range``, ``audit_range`` and ``examined_message`` rows of a folder numbering, and the
counts ``GET /v1/mail-sync`` shows; the lease scheduler's (``scheduler.py`` holds their
transactions): the replicas alive in ``replica``, the leases and claims of ``mailbox`` rows over
every company, and what a claimed mailbox's worker reads first; and the mailbox sync's
(``engine.py`` holds its transactions, each function runs in the session it is given): the lease
fence on the mailbox row, the count of the company's leads, the ``lead_recheck`` rows, the folder
cursors and a batch's ``synced_message`` rows.

The sync's hot path, a batch's rows, is one statement of arrays each (``unnest``), compiled once as
plain SQL through Core (:data:`_RECORD_SYNCED`, :data:`_RECORD_MESSAGES`), not a multi-row VALUES
compiled anew per batch; the scheduler's ``last_synced_at`` write-back is one statement executed
for many."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, bindparam, delete, func, or_, select, text, union_all, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_sync.mailbox.states import SYNCED, Slot, SyncMode
from leadline_sync.models import (
    audit_range,
    examined_message,
    examined_range,
    folder_cursor,
    lead_address,
    lead_recheck,
    mailbox,
    replica,
)
from leadline_sync.sync.folder import FolderCursor

Run = tuple[str, int, int]  # reason, first UID, last UID


def _folder(table: Any, mailbox_id: uuid.UUID, folder: str, uidvalidity: int) -> Any:
    return and_(
        table.c.mailbox_id == mailbox_id,
        table.c.folder == folder,
        table.c.uidvalidity == uidvalidity,
    )


# --- examined ranges
# ---------------------------------------------------------------------------------------


async def ranges_around(
    session: AsyncSession, mailbox_id: uuid.UUID, folder: str, uidvalidity: int, low: int, high: int
) -> list[Run]:
    """The examined ranges that touch [low, high]: those starting in it, and the one before it."""
    where = _folder(examined_range, mailbox_id, folder, uidvalidity)
    columns = (examined_range.c.reason, examined_range.c.first_uid, examined_range.c.last_uid)
    starting = select(*columns).where(where, examined_range.c.first_uid.between(low, high))
    before = (
        select(*columns)
        .where(where, examined_range.c.first_uid < low)
        .order_by(examined_range.c.first_uid.desc())
        .limit(1)
    )
    rows = (await session.execute(union_all(starting, before.subquery().select()))).all()
    return sorted(((r[0], r[1], r[2]) for r in rows if r[2] >= low), key=lambda r: r[1])


async def replace_ranges(
    session: AsyncSession,
    mailbox_id: uuid.UUID,
    folder: str,
    uidvalidity: int,
    old: Sequence[Run],
    new: Sequence[Run],
) -> None:
    """The examined ranges ``old`` (as :func:`ranges_around` read them) become ``new``."""
    if old:
        await session.execute(
            delete(examined_range).where(
                _folder(examined_range, mailbox_id, folder, uidvalidity),
                examined_range.c.first_uid.in_([r[1] for r in old]),
            )
        )
    await session.execute(
        insert(examined_range),
        [
            {
                "mailbox_id": mailbox_id,
                "folder": folder,
                "uidvalidity": uidvalidity,
                "reason": reason,
                "first_uid": first,
                "last_uid": last,
            }
            for reason, first, last in new
        ],
    )


async def examined_reason(
    session: AsyncSession, mailbox_id: uuid.UUID, folder: str, uidvalidity: int, uid: int
) -> str | None:
    """The reason recorded for one examined UID; None when no range covers it (never examined, or
    lost)."""
    reason: str | None = (
        await session.execute(
            select(examined_range.c.reason)
            .where(
                _folder(examined_range, mailbox_id, folder, uidvalidity),
                examined_range.c.first_uid <= uid,
                examined_range.c.last_uid >= uid,
            )
            .order_by(examined_range.c.first_uid.desc())
            .limit(1)
        )
    ).scalar()
    return reason


async def forget_other_uidvalidities(
    session: AsyncSession, mailbox_id: uuid.UUID, folder: str, uidvalidity: int
) -> None:
    for table in (examined_range, audit_range, examined_message):
        await session.execute(
            delete(table).where(
                table.c.mailbox_id == mailbox_id,
                table.c.folder == folder,
                table.c.uidvalidity != uidvalidity,
            )
        )


# --- examined messages
# -------------------------------------------------------------------------------------

# One array per column, unnested: a batch's rows are one statement with five parameters, compiled
# once (a multi-row VALUES is compiled anew for every batch: a quarter of a header scan's CPU).
_RECORD_MESSAGES = text("""
INSERT INTO examined_message (mailbox_id, message_key, folder, uidvalidity, uid)
SELECT CAST(:mailbox_id AS uuid), key, CAST(:folder AS text), CAST(:uidvalidity AS bigint), uid
FROM unnest(CAST(:keys AS bytea[]), CAST(:uids AS bigint[])) AS r(key, uid)
ON CONFLICT DO NOTHING
""")


async def record_messages(
    session: AsyncSession,
    mailbox_id: uuid.UUID,
    folder: str,
    uidvalidity: int,
    keys: list[bytes],
    uids: list[int],
) -> None:
    """``examined_message`` rows for the UIDs ``uids``, ``keys`` their keyed Message-IDs: one
    statement."""
    await session.execute(
        _RECORD_MESSAGES,
        {
            "mailbox_id": mailbox_id,
            "folder": folder,
            "uidvalidity": uidvalidity,
            "keys": keys,
            "uids": uids,
        },
    )


async def examined_places(
    session: AsyncSession, mailbox_id: uuid.UUID, message_keys: list[bytes]
) -> list[Any]:
    """Where a keyed Message-ID (any of ``message_keys``) was examined: rows (folder, uidvalidity,
    uid, examined_at)."""
    return list(
        (
            await session.execute(
                select(
                    examined_message.c.folder,
                    examined_message.c.uidvalidity,
                    examined_message.c.uid,
                    examined_message.c.examined_at,
                )
                .where(
                    examined_message.c.mailbox_id == mailbox_id,
                    examined_message.c.message_key.in_(message_keys),
                )
                .order_by(examined_message.c.folder, examined_message.c.uid)
            )
        ).all()
    )


# --- the server's UIDs at the last audit
# -------------------------------------------------------------------


async def forget_audit(
    session: AsyncSession, mailbox_id: uuid.UUID, folder: str, uidvalidity: int
) -> None:
    await session.execute(
        delete(audit_range).where(_folder(audit_range, mailbox_id, folder, uidvalidity))
    )


async def add_audit_ranges(
    session: AsyncSession,
    mailbox_id: uuid.UUID,
    folder: str,
    uidvalidity: int,
    ranges: Sequence[Run],
) -> None:
    await session.execute(
        insert(audit_range),
        [
            {
                "mailbox_id": mailbox_id,
                "folder": folder,
                "uidvalidity": uidvalidity,
                "first_uid": first,
                "last_uid": last,
            }
            for _, first, last in ranges
        ],
    )


# --- counts
# ------------------------------------------------------------------------------------------------


async def examined_by_reason(
    session: AsyncSession, mailbox_id: uuid.UUID, folder: str, uidvalidity: int
) -> dict[str, int]:
    """How many UIDs of the folder numbering were examined, by reason."""
    length = examined_range.c.last_uid - examined_range.c.first_uid + 1
    return {
        reason: int(count)
        for reason, count in (
            await session.execute(
                select(examined_range.c.reason, func.sum(length))
                .where(_folder(examined_range, mailbox_id, folder, uidvalidity))
                .group_by(examined_range.c.reason)
            )
        ).all()
    }


async def audited(
    session: AsyncSession, mailbox_id: uuid.UUID, folder: str, uidvalidity: int, top: int
) -> tuple[int, int, int]:
    """At the last audit: the server's UIDs, those of them ≤ ``top``, and those of these
    examined."""
    where = _folder(audit_range, mailbox_id, folder, uidvalidity)
    server_length = audit_range.c.last_uid - audit_range.c.first_uid + 1
    below = func.least(audit_range.c.last_uid, top) - audit_range.c.first_uid + 1
    on_server, server_below = (
        int(v or 0)
        for v in (
            await session.execute(
                select(func.sum(server_length), func.sum(func.greatest(0, below))).where(where)
            )
        ).one()
    )
    overlap = (
        func.least(audit_range.c.last_uid, examined_range.c.last_uid, top)
        - func.greatest(audit_range.c.first_uid, examined_range.c.first_uid)
        + 1
    )
    examined_below = int(
        (
            await session.execute(
                select(func.coalesce(func.sum(func.greatest(0, overlap)), 0))
                .select_from(
                    audit_range.join(
                        examined_range,
                        and_(
                            examined_range.c.mailbox_id == audit_range.c.mailbox_id,
                            examined_range.c.folder == audit_range.c.folder,
                            examined_range.c.uidvalidity == audit_range.c.uidvalidity,
                            examined_range.c.first_uid <= audit_range.c.last_uid,
                            examined_range.c.last_uid >= audit_range.c.first_uid,
                        ),
                    )
                )
                .where(where)
            )
        ).scalar_one()
    )
    return on_server, server_below, examined_below


# --- the scheduler: replicas, leases, claims
# -------------------------------------------------------------------------------


async def register_replica(session: AsyncSession, name: str, live_capacity: int) -> None:
    """The replica ``name`` is alive (``seen_at`` now), and may hold ``live_capacity`` mailboxes
    live."""
    capacity = {"live_capacity": live_capacity, "seen_at": func.now()}
    await session.execute(
        insert(replica)
        .values(name=name, **capacity)
        .on_conflict_do_update(index_elements=[replica.c.name], set_=capacity)
    )


async def unregister_replica(session: AsyncSession, name: str) -> None:
    await session.execute(delete(replica).where(replica.c.name == name))


async def alive_replicas(session: AsyncSession, lease: timedelta) -> dict[str, int]:
    """The replicas seen within a lease period → their live capacities."""
    return dict(
        (
            await session.execute(
                select(replica.c.name, replica.c.live_capacity).where(
                    replica.c.seen_at > func.now() - lease
                )
            )
        ).all()
    )


# the mailboxes to sync, every company's (unscoped: the scheduler's count); an alias, so that inside
# a claim on ``mailbox`` it counts the table rather than correlating to the claimed row
_counted = mailbox.alias("counted")
_TO_SYNC = (
    select(func.count())
    .select_from(_counted)
    .where(_counted.c.status.in_(SYNCED), _counted.c.slot == Slot.GRANTED)
)


async def mailboxes_to_sync(session: AsyncSession) -> int:
    """How many mailboxes there are to sync, every company's."""
    total: int = (await session.execute(_TO_SYNC)).scalar_one()
    return total


async def renew_leases(
    session: AsyncSession, replica_name: str, ids: list[uuid.UUID], lease: timedelta
) -> set[uuid.UUID]:
    """Renew for ``lease`` from now the leases ``replica_name`` holds on the mailboxes ``ids`` that
    are still to sync; those it renewed (and locked)."""
    return set(
        (
            await session.execute(
                # unscoped: the scheduler renews its own leases over every company
                update(mailbox)
                .where(
                    mailbox.c.id.in_(ids),
                    mailbox.c.lease_owner == replica_name,
                    mailbox.c.status.in_(SYNCED),
                )
                .values(lease_expires_at=func.now() + lease)
                .returning(mailbox.c.id)
            )
        ).scalars()
    )


async def write_last_synced(session: AsyncSession, synced: dict[uuid.UUID, datetime]) -> None:
    """Each mailbox's ``last_synced_at`` (``synced``: mailbox id → when; one statement, executed
    for many)."""
    await session.execute(
        # unscoped: the replica's own mailboxes, by id, of those this transaction renewed
        update(mailbox)
        .where(mailbox.c.id == bindparam("synced_id"))
        .values(last_synced_at=bindparam("synced_at")),
        [{"synced_id": m, "synced_at": at} for m, at in synced.items()],
    )


async def give_back_leases(
    session: AsyncSession,
    replica_name: str,
    ids: list[uuid.UUID],
    retry_at: datetime | None = None,
) -> None:
    """Give back the leases ``replica_name`` holds on the mailboxes ``ids``; with ``retry_at``,
    none of them is due before it."""
    later = {} if retry_at is None else {"next_attempt_at": retry_at}
    await session.execute(
        # unscoped: the scheduler's leases on mailboxes, by id and our replica
        update(mailbox)
        .where(mailbox.c.id.in_(ids), mailbox.c.lease_owner == replica_name)
        .values(lease_owner=None, lease_expires_at=None, **later)
    )


async def give_back_all(session: AsyncSession, replica_name: str) -> None:
    await session.execute(
        # unscoped: the scheduler gives back its own leases over every company
        update(mailbox)
        .where(mailbox.c.lease_owner == replica_name)
        .values(lease_owner=None, lease_expires_at=None)
    )


async def next_foreign_expiry(session: AsyncSession, replica_name: str) -> float | None:
    """Seconds until the first lease a replica other than ``replica_name`` holds on a mailbox to
    sync expires; None when it holds none that runs."""
    seconds = (
        await session.execute(
            # unscoped: the scheduler looks at every company's leases
            select(func.extract("epoch", func.min(mailbox.c.lease_expires_at) - func.now())).where(
                mailbox.c.status.in_(SYNCED),
                mailbox.c.slot == Slot.GRANTED,
                mailbox.c.lease_owner != replica_name,
                mailbox.c.lease_expires_at >= func.now(),
            )
        )
    ).scalar_one()
    return None if seconds is None else float(seconds)


async def claim_due(
    session: AsyncSession,
    replica_name: str,
    mode: SyncMode,
    free: int,
    now: datetime,
    lease: timedelta,
    *,
    held: list[uuid.UUID],
    fresh: datetime | None = None,
    counted: int | None = None,
) -> list[Row[Any]]:
    """Claim for ``replica_name``, in ``mode``, for ``lease`` from now, up to ``free`` mailboxes
    due at ``now`` that nobody holds or whose lease expired, oldest last sync first, skipping rows
    another transaction locked and those of ``held``; their rows.

    ``fresh`` (rotating): only mailboxes last synced at or before it.  ``counted``: none while
    there are more mailboxes to sync than that, in the same statement (one snapshot)."""
    due = (
        # unscoped: the scheduler picks due mailboxes of every company
        select(mailbox.c.id)
        .where(
            mailbox.c.status.in_(SYNCED),
            mailbox.c.slot == Slot.GRANTED,
            mailbox.c.next_attempt_at <= now,
            or_(mailbox.c.lease_owner.is_(None), mailbox.c.lease_expires_at < func.now()),
        )
        .order_by(mailbox.c.last_synced_at.asc().nulls_first(), mailbox.c.next_attempt_at)
        .limit(free)
        .with_for_update(skip_locked=True)
    )
    if fresh is not None:
        due = due.where(or_(mailbox.c.last_synced_at.is_(None), mailbox.c.last_synced_at <= fresh))
    if counted is not None:
        due = due.where(_TO_SYNC.scalar_subquery() <= counted)
    if held:
        due = due.where(mailbox.c.id.not_in(held))
    return list(
        (
            await session.execute(
                # unscoped: the scheduler claims due mailboxes of every company
                update(mailbox)
                .where(mailbox.c.id.in_(due.scalar_subquery()))
                .values(
                    lease_owner=replica_name,
                    lease_expires_at=func.now() + lease,
                    sync_mode=mode,
                )
                .returning(*mailbox.c)
            )
        ).all()
    )


async def folder_cursors_of(
    session: AsyncSession, ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[Row[Any]]]:
    """The folder cursors of each of the mailboxes ``ids`` (none: an empty list)."""
    cursors: dict[uuid.UUID, list[Row[Any]]] = {mailbox_id: [] for mailbox_id in ids}
    for cursor in await session.execute(
        select(folder_cursor).where(folder_cursor.c.mailbox_id.in_(ids))
    ):
        cursors[cursor.mailbox_id].append(cursor)
    return cursors


async def rechecks_waiting(session: AsyncSession, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of the mailboxes ``ids`` have mail to examine again for a late lead
    (``lead_recheck``)."""
    return set(
        (
            await session.execute(
                select(lead_recheck.c.mailbox_id)
                .where(lead_recheck.c.mailbox_id.in_(ids))
                .distinct()
            )
        ).scalars()
    )


# --- the mailbox sync (engine.py): its lease fence, leads, rechecks, cursors, batches
# -----------------------------------------------------------------------------------


async def fence_mailbox(
    session: AsyncSession, mailbox_id: uuid.UUID, replica_name: str
) -> Row[Any] | None:
    """The mailbox's row, locked, while ``replica_name`` holds its lease and it is to be synced;
    None otherwise."""
    return (
        await session.execute(
            # unscoped: the syncer's own mailbox, by its id and our lease
            select(mailbox)
            .where(
                mailbox.c.id == mailbox_id,
                mailbox.c.lease_owner == replica_name,
                mailbox.c.lease_expires_at > func.now(),
                mailbox.c.status.in_(SYNCED),
            )
            .with_for_update()
        )
    ).first()


async def leads_known(session: AsyncSession, company_id: uuid.UUID, as_of: datetime) -> int:
    """How many of the company's leads created up to ``as_of`` our copy holds addresses of."""
    have: int = (
        await session.execute(
            select(func.count(func.distinct(lead_address.c.lead_id))).where(
                lead_address.c.company_id == company_id,
                lead_address.c.lead_created_at <= as_of,
            )
        )
    ).scalar_one()
    return have


async def rechecks_of(session: AsyncSession, mailbox_id: uuid.UUID, limit: int) -> list[Row[Any]]:
    """The mailbox's first ``limit`` ``lead_recheck`` rows, oldest first."""
    return list(
        (
            await session.execute(
                select(lead_recheck)
                .where(lead_recheck.c.mailbox_id == mailbox_id)
                .order_by(lead_recheck.c.created_at)
                .limit(limit)
            )
        ).all()
    )


async def delete_recheck(
    session: AsyncSession, mailbox_id: uuid.UUID, lead_id: uuid.UUID, created_at: datetime
) -> None:
    """The ``lead_recheck`` row of the lead, if it was not updated since ``created_at``."""
    await session.execute(
        delete(lead_recheck).where(
            lead_recheck.c.mailbox_id == mailbox_id,
            lead_recheck.c.lead_id == lead_id,
            lead_recheck.c.created_at == created_at,
        )
    )


async def write_audited(
    session: AsyncSession, mailbox_id: uuid.UUID, folder: str, at: datetime, found: int
) -> None:
    """The folder's cursor was audited ``at``, and the audit found ``found`` UIDs never
    examined."""
    await session.execute(
        update(folder_cursor)
        .where(
            folder_cursor.c.mailbox_id == mailbox_id,
            folder_cursor.c.folder == folder,
        )
        .values(audited_at=at, audit_found=found)
    )


async def save_cursor(session: AsyncSession, mailbox_id: uuid.UUID, cursor: FolderCursor) -> None:
    """The folder's cursor row, inserted or updated."""
    values = {
        "name": cursor.name,
        "uidvalidity": cursor.uidvalidity,
        "last_uid": cursor.last_uid,
        "highestmodseq": cursor.highestmodseq,
        "uidnext": cursor.uidnext,
        "history_last_uid": cursor.history_last_uid,
        "history_floor": cursor.history_floor,
        "uidvalidity_resets": cursor.resets,
        "uidvalidity_resets_since": cursor.resets_since,
        "rescan_refused_at": cursor.rescan_refused_at,
        "updated_at": func.now(),
    }
    statement = insert(folder_cursor).values(mailbox_id=mailbox_id, folder=cursor.folder, **values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[folder_cursor.c.mailbox_id, folder_cursor.c.folder], set_=values
        )
    )


async def write_synced_at(session: AsyncSession, mailbox_id: uuid.UUID, at: datetime) -> None:
    await session.execute(
        # unscoped: the syncer's own mailbox, by its id
        update(mailbox).where(mailbox.c.id == mailbox_id).values(last_synced_at=at)
    )


async def complete_history(session: AsyncSession, mailbox_id: uuid.UUID, at: datetime) -> None:
    """The mailbox's historical sync completed ``at`` (unless it already had)."""
    await session.execute(
        # unscoped: the syncer's own mailbox, by its id
        update(mailbox)
        .where(mailbox.c.id == mailbox_id, mailbox.c.history_completed_at.is_(None))
        .values(history_completed_at=at)
    )


# A batch's synced_message rows as one statement of arrays, compiled once (a multi-row VALUES is
# not); a row already there (the same UID, or the same Message-ID in the folder) is not returned
# (R26).
_RECORD_SYNCED = text("""
INSERT INTO synced_message (mailbox_id, folder, uidvalidity, uid, message_id, kind, event_id)
SELECT CAST(:mailbox_id AS uuid), CAST(:folder AS text), CAST(:uidvalidity AS bigint), uid, message_id, kind, event_id
FROM unnest(CAST(:uids AS bigint[]), CAST(:message_ids AS text[]), CAST(:kinds AS text[]), CAST(:event_ids AS uuid[]))
     AS r(uid, message_id, kind, event_id)
ON CONFLICT DO NOTHING
RETURNING uid
""")  # noqa: E501


async def record_synced(
    session: AsyncSession,
    mailbox_id: uuid.UUID,
    folder: str,
    uidvalidity: int,
    uids: list[int],
    message_ids: list[str],
    kinds: list[str],
    event_ids: list[uuid.UUID],
) -> set[int]:
    """``synced_message`` rows for a batch (one per UID, the lists side by side): one statement;
    the UIDs of those inserted (a row already there is not)."""
    inserted = await session.execute(
        _RECORD_SYNCED,
        {
            "mailbox_id": mailbox_id,
            "folder": folder,
            "uidvalidity": uidvalidity,
            "uids": uids,
            "message_ids": message_ids,
            "kinds": kinds,
            "event_ids": event_ids,
        },
    )
    return set(inserted.scalars())
