"""Proof that no mail was missed: what the sync examined, per folder, and the audit against the
server.

What was examined is kept as ranges, not a row per message: per mailbox,
folder and UIDVALIDITY, ``examined_range`` rows ``(reason, first_uid,
last_uid)`` cover every UID the sync examined, each UID in exactly one range,
with the reason the message was or was not stored (:data:`REASONS`).  A
batch rewrites only the few ranges around its UIDs (:func:`record_examined`);
examining a message again (a late lead, an audit) moves its UID to its new
reason.  A folder of 1,000,000 messages with 10,000 lead mails among them
holds about 20,000 ranges.

The audit lists the server's UIDs in windows of :data:`AUDIT_WINDOW`
(``UID SEARCH``, ESEARCH where offered), keeps them as ranges too
(``audit_range``: what the server held at the last audit) and yields, window
by window, the UIDs up to the cursor that no range covers; the engine
examines those again.  Memory stays at one window of UIDs whatever the size
of the folder.  ``GET /v1/mail-sync`` compares the two sets of ranges:
``missing`` is the server's UIDs up to the cursor that were never examined.

To answer "why is this mail not on the timeline?" for a Message-ID, every
examined message with a Message-ID also leaves an ``examined_message`` row
(:func:`record_messages`, in the batch's transaction): a keyed hash of the
mailbox and the Message-ID (:class:`MessageKeys`), the folder, UIDVALIDITY and
UID, and when.  Nothing else of a message that matches no lead is kept (R6):
not its addresses, subject or date, and the hash cannot be checked against a
guessed Message-ID without the service's keys.  The reason comes from the
UID's ``examined_range``, so a message examined again needs no update here.

The statements are in :mod:`leadline_sync.sync.repository`; this module holds the arithmetic of
ranges.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.db import Database
from leadline_mail.imap import ImapClient
from leadline_mail.mime import extract_message_id
from leadline_sync.mailbox import repository as mailboxes
from leadline_sync.sync import repository
from leadline_sync.sync.repository import Run

AUDIT_WINDOW = 20_000

REASONS = {
    "lead_mail": "on a lead's timeline",
    "damaged_lead_mail": "on a lead's timeline, unreadable and kept as received (R27)",
    "bounce": "a bounce of mail to a lead (R17)",
    "complaint": (
        "a lead's complaint about mail (a feedback report): the lead gets no more marketing mail"
    ),
    "no_lead": "no address of a lead of the company at that time (R6)",
    "blocklisted": "every lead address on it is blocklisted (R6)",
    "own_domain": "only addresses of the company's own domains (R6)",
    "before_lead": "dated before its lead was created, after the mailbox was connected (R5)",
    "gone": "deleted from the server before it could be read",
    "before_audit": "examined before the sync recorded reasons",
}
"""Why an examined message was (or was not) stored; the keys are stored."""


def runs(reasons: Mapping[int, str]) -> list[Run]:
    """UID → reason as ranges of consecutive UIDs with one reason."""
    out: list[Run] = []
    for uid in sorted(reasons):
        reason = reasons[uid]
        if out and out[-1][0] == reason and out[-1][2] == uid - 1:
            out[-1] = (reason, out[-1][1], uid)
        else:
            out.append((reason, uid, uid))
    return out


def overlay(existing: Sequence[Run], new: Sequence[Run]) -> list[Run]:
    """``existing`` ranges with ``new`` ones laid over them; neighbours of one reason merged."""
    pieces: list[Run] = []
    for reason, first, last in existing:
        segments = [(first, last)]
        for _, low, high in new:
            if high < first or low > last:
                continue
            kept: list[tuple[int, int]] = []
            for a, b in segments:
                if high < a or low > b:
                    kept.append((a, b))
                    continue
                if a < low:
                    kept.append((a, low - 1))
                if high < b:
                    kept.append((high + 1, b))
            segments = kept
        pieces.extend((reason, a, b) for a, b in segments)
    merged: list[Run] = []
    for run in sorted([*pieces, *new], key=lambda r: r[1]):
        if merged and merged[-1][0] == run[0] and merged[-1][2] + 1 == run[1]:
            merged[-1] = (run[0], merged[-1][1], run[2])
        else:
            merged.append(run)
    return merged


async def record_examined(
    session: AsyncSession,
    mailbox_id: uuid.UUID,
    folder: str,
    uidvalidity: int,
    reasons: Mapping[int, str],
) -> None:
    """Note that the UIDs of ``reasons`` were examined, and why each was stored or not."""
    if not reasons:
        return
    new = runs(reasons)
    low, high = new[0][1], new[-1][2]
    existing = await repository.ranges_around(
        session, mailbox_id, folder, uidvalidity, low - 1, high + 1
    )
    await repository.replace_ranges(
        session, mailbox_id, folder, uidvalidity, existing, overlay(existing, new)
    )


MESSAGE_KEY_BYTES = 16


class MessageKeys:
    """Keyed hashes of Message-IDs, per mailbox; one HMAC key derived (HKDF) from each credential
    KEK.

    New rows are hashed under the current KEK; a lookup tries every configured
    one, so rows stay findable through a KEK rotation while the old key is kept.
    """

    def __init__(self, keks: Sequence[tuple[str, bytes]]) -> None:
        self._keys = [
            HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=b"leadline-sync examined Message-ID",
            ).derive(kek)
            for _, kek in keks
        ]

    @staticmethod
    def normalized(message_id: str) -> str | None:
        """``<id@host>`` as the sync reads it from a header (brackets optional in what a user
        types)."""
        return extract_message_id(message_id)

    def _key(self, key: bytes, mailbox_id: uuid.UUID, message_id: str) -> bytes:
        text = f"{mailbox_id}\n{message_id}".encode()
        return hmac.new(key, text, hashlib.sha256).digest()[:MESSAGE_KEY_BYTES]

    def current(self, mailbox_id: uuid.UUID, message_id: str) -> bytes:
        return self._key(self._keys[0], mailbox_id, message_id)

    def every(self, mailbox_id: uuid.UUID, message_id: str) -> list[bytes]:
        return [self._key(key, mailbox_id, message_id) for key in self._keys]


async def record_messages(
    session: AsyncSession,
    keys: MessageKeys,
    mailbox_id: uuid.UUID,
    folder: str,
    uidvalidity: int,
    message_ids: Mapping[int, str],
) -> None:
    """Note where the messages of ``message_ids`` (UID → Message-ID) were examined: one
    statement."""
    if not message_ids:
        return
    await repository.record_messages(
        session,
        mailbox_id,
        folder,
        uidvalidity,
        [keys.current(mailbox_id, message_id) for message_id in message_ids.values()],
        list(message_ids),
    )


async def examined_places(
    session: AsyncSession, keys: MessageKeys, mailbox_id: uuid.UUID, message_id: str
) -> list[Any]:
    """Where a Message-ID was examined in the mailbox: rows (folder, uidvalidity, uid,
    examined_at)."""
    return await repository.examined_places(session, mailbox_id, keys.every(mailbox_id, message_id))


async def examined_reason(
    session: AsyncSession, mailbox_id: uuid.UUID, folder: str, uidvalidity: int, uid: int
) -> str | None:
    """The reason recorded for one examined UID; None when no range covers it (never examined, or
    lost)."""
    return await repository.examined_reason(session, mailbox_id, folder, uidvalidity, uid)


async def forget_other_uidvalidities(
    session: AsyncSession, mailbox_id: uuid.UUID, folder: str, uidvalidity: int
) -> None:
    """A renumbered folder: the ranges of its old numbering mean nothing now."""
    await repository.forget_other_uidvalidities(session, mailbox_id, folder, uidvalidity)


async def unexamined(
    client: ImapClient,
    db: Database,
    mailbox_id: uuid.UUID,
    folder: str,
    uidvalidity: int,
    last_uid: int,
    uidnext: int,
) -> AsyncIterator[list[int]]:
    """The audit of the selected folder: per window, the server's UIDs ≤ ``last_uid`` never
    examined.

    Records the server's UIDs as ``audit_range`` rows as it goes (the previous audit's are
    replaced).
    """
    async with db.session() as session:
        await repository.forget_audit(session, mailbox_id, folder, uidvalidity)
    for low in range(1, max(1, uidnext), AUDIT_WINDOW):
        high = min(low + AUDIT_WINDOW - 1, uidnext - 1)
        uids = await client.uids_between(low, high)
        if not uids:
            continue
        async with db.session() as session:
            await repository.add_audit_ranges(
                session, mailbox_id, folder, uidvalidity, runs(dict.fromkeys(uids, ""))
            )
            examined = await repository.ranges_around(
                session, mailbox_id, folder, uidvalidity, low, high
            )
        missing: list[int] = []
        ranges = iter(examined)
        current = next(ranges, None)
        for uid in uids:
            if uid > last_uid:
                break
            while current is not None and current[2] < uid:
                current = next(ranges, None)
            if current is None or uid < current[1]:
                missing.append(uid)
        if missing:
            yield missing


@dataclass(frozen=True)
class FolderCounts:
    on_server: int | None  # at the last audit; None before the first
    examined: int
    by_reason: dict[str, int]
    not_yet_examined: int | None
    missing: int | None
    audited_at: datetime | None
    audit_found: int


async def folder_counts(session: AsyncSession, mailbox_id: uuid.UUID) -> dict[str, FolderCounts]:
    """Per folder: the server's messages (last audit) against what the sync examined, by reason."""
    result: dict[str, FolderCounts] = {}
    for cursor in await mailboxes.folder_cursors(session, mailbox_id):
        by_reason = await repository.examined_by_reason(
            session, mailbox_id, cursor.folder, cursor.uidvalidity
        )
        on_server = not_yet = missing = None
        if cursor.audited_at is not None:
            on_server, server_below, examined_below = await repository.audited(
                session, mailbox_id, cursor.folder, cursor.uidvalidity, cursor.last_uid
            )
            not_yet = on_server - server_below
            missing = server_below - examined_below
        result[cursor.folder] = FolderCounts(
            on_server=on_server,
            examined=sum(by_reason.values()),
            by_reason=by_reason,
            not_yet_examined=not_yet,
            missing=missing,
            audited_at=cursor.audited_at,
            audit_found=cursor.audit_found,
        )
    return result
