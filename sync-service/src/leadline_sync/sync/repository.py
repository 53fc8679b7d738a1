"""Every query of the completeness audit (``audit.py`` holds its range arithmetic): the
``examined_range``, ``audit_range`` and ``examined_message`` rows of a folder numbering, and the
counts ``GET /v1/mail-sync`` shows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, and_, delete, func, select, text, union_all
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_sync.models import audit_range, examined_message, examined_range, folder_cursor

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


async def folder_cursors(session: AsyncSession, mailbox_id: uuid.UUID) -> list[Row[Any]]:
    return list(
        (
            await session.execute(
                select(folder_cursor).where(folder_cursor.c.mailbox_id == mailbox_id)
            )
        ).all()
    )


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
