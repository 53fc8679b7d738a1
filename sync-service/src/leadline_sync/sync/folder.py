"""One folder's cursor, and what a pass does with the folder: :func:`decide`, pure, tested without a
server.

``decide(cursor, status)`` reads the stored cursor against the server's answer to STATUS (a folder
polled without SELECT) or SELECT, and says what comes first, with why (as emailengine's
``determineSyncStrategy``)::

    no cursor ......................... BEGIN    a cursor at UIDNEXT-1, the history below it
    another folder, or UIDVALIDITY .... RESCAN   a new cursor; nothing is published twice (R26)
    UIDs above the cursor ............. SCAN     read them, oldest first
    history below the floor ........... HISTORY  one window of it, newest first
    HIGHESTMODSEQ moved ............... CHANGED  nothing to read: the cursor takes the counters
    otherwise ......................... NONE     a STATUS answer spares the SELECT

After a SELECT the pass (:meth:`leadline_sync.sync.engine.MailboxSync._sync_folder`) makes a new
cursor on BEGIN or RESCAN and decides again, scans on SCAN, lets the cursor take the server's
counters (:meth:`FolderCursor.advance`) and then examines a window of history while any is pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from leadline_mail.imap import FolderStatus
from leadline_sync.matching import FolderRole

RESCAN_DAY = timedelta(days=1)


@dataclass
class FolderCursor:
    folder: FolderRole
    name: str
    uidvalidity: int
    last_uid: int
    highestmodseq: int | None
    uidnext: int
    history_last_uid: int
    # UIDVALIDITY changes (rescans) in the day that started at resets_since; a refused rescan,
    # logged once a day
    resets: int = 0
    resets_since: datetime | None = None
    rescan_refused_at: datetime | None = None
    audited_at: datetime | None = None  # the last completeness audit (sync/audit.py)
    # the history is examined newest first: UIDs history_floor..history_last_uid are done (1: all of
    # it)
    history_floor: int = 1

    @property
    def history_pending(self) -> bool:
        return self.history_floor > 1

    def advance(self, status: FolderStatus) -> bool:
        """Take the counters of a SELECT whose UIDs above the cursor were scanned: True when it
        moved.

        Every message below UIDNEXT was in that scan: a UID it did not return was expunged (the
        newest mail deleted, an address proof taken back), so the cursor passes it, or history never
        completes.
        """
        below_uidnext = status.uidnext - 1
        if (
            below_uidnext <= self.last_uid
            and status.highestmodseq == self.highestmodseq
            and status.uidnext == self.uidnext
        ):
            return False
        self.last_uid = max(self.last_uid, below_uidnext)
        self.highestmodseq, self.uidnext = status.highestmodseq, status.uidnext
        return True


class FolderAction(StrEnum):
    BEGIN = "begin"
    RESCAN = "rescan"
    SCAN = "scan"
    HISTORY = "history"
    CHANGED = "changed"
    NONE = "none"


class Decision(NamedTuple):
    action: FolderAction
    reason: str


def decide(cursor: FolderCursor | None, status: FolderStatus) -> Decision:
    """What a pass does first with the folder ``status`` names, given its stored ``cursor`` (table
    above)."""
    if cursor is None:
        return Decision(FolderAction.BEGIN, "no cursor")
    if cursor.name != status.name:
        return Decision(FolderAction.RESCAN, "another folder has the role")
    if cursor.uidvalidity != status.uidvalidity:
        return Decision(FolderAction.RESCAN, "uidvalidity changed")
    if status.uidnext - 1 > cursor.last_uid:
        return Decision(FolderAction.SCAN, "new mail above the cursor")
    if cursor.history_pending:
        return Decision(FolderAction.HISTORY, "history below the floor")
    if status.highestmodseq is not None and status.highestmodseq != cursor.highestmodseq:
        return Decision(FolderAction.CHANGED, "highestmodseq moved")
    return Decision(FolderAction.NONE, "unchanged")


def rescan_allowed(cursor: FolderCursor, now: datetime, per_day: int) -> bool:
    """Count one more rescan of ``cursor``'s folder in its day (a new day starts with the first
    after the last).

    False, and nothing counted, when ``per_day`` rescans were made in this day already.
    """
    if cursor.resets_since is None or now - cursor.resets_since >= RESCAN_DAY:
        cursor.resets, cursor.resets_since = 0, now
    if cursor.resets >= per_day:
        return False
    cursor.resets += 1
    return True
