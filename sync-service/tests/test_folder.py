"""The folder-sync decision and the cursor's bookkeeping, without a server (sync/folder.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from leadline_mail.imap import FolderStatus
from leadline_sync.sync.folder import Decision, FolderAction, FolderCursor, decide, rescan_allowed

# a cursor of INBOX synced to UID 40 (UIDNEXT 41), its history done
SYNCED = FolderCursor(
    folder="inbox",
    name="INBOX",
    uidvalidity=7,
    last_uid=40,
    highestmodseq=900,
    uidnext=41,
    history_last_uid=20,
    history_floor=1,
)
SAME = FolderStatus(name="INBOX", uidvalidity=7, uidnext=41, exists=38, highestmodseq=900)


@pytest.mark.parametrize(
    ("cursor", "status", "expected"),
    [
        pytest.param(None, SAME, (FolderAction.BEGIN, "no cursor"), id="no-cursor"),
        pytest.param(
            SYNCED,
            replace(SAME, name="INBOX.old", uidnext=60),
            (FolderAction.RESCAN, "another folder has the role"),
            id="another-folder",
        ),
        pytest.param(
            SYNCED,
            replace(SAME, uidvalidity=8, uidnext=60),
            (FolderAction.RESCAN, "uidvalidity changed"),
            id="renumbered",
        ),
        pytest.param(
            replace(SYNCED, history_floor=10),
            replace(SAME, uidnext=45, highestmodseq=950),
            (FolderAction.SCAN, "new mail above the cursor"),
            id="new-mail-before-history",
        ),
        pytest.param(
            replace(SYNCED, history_floor=10),
            replace(SAME, highestmodseq=950),
            (FolderAction.HISTORY, "history below the floor"),
            id="history",
        ),
        pytest.param(
            SYNCED,
            replace(SAME, highestmodseq=950),
            (FolderAction.CHANGED, "highestmodseq moved"),
            id="modseq",
        ),
        pytest.param(SYNCED, SAME, (FolderAction.NONE, "unchanged"), id="unchanged"),
        # a server without CONDSTORE tells no HIGHESTMODSEQ: nothing says the folder changed
        pytest.param(
            SYNCED,
            replace(SAME, highestmodseq=None),
            (FolderAction.NONE, "unchanged"),
            id="no-condstore",
        ),
        # the newest mail expunged: UIDNEXT moved, nothing above the cursor is left to read
        pytest.param(
            replace(SYNCED, last_uid=44),
            replace(SAME, uidnext=45),
            (FolderAction.NONE, "unchanged"),
            id="newest-expunged",
        ),
    ],
)
def test_the_decision_names_what_comes_first_and_why(
    cursor: FolderCursor | None, status: FolderStatus, expected: tuple[FolderAction, str]
) -> None:
    assert decide(cursor, status) == Decision(*expected)


def test_a_cursor_takes_the_counters_of_a_select_and_passes_expunged_uids() -> None:
    cursor = replace(SYNCED)
    assert not cursor.advance(SAME)
    assert cursor == SYNCED

    # UIDs 41..44 scanned, 44 not returned (expunged): the cursor passes it
    cursor.last_uid = 43
    assert cursor.advance(replace(SAME, uidnext=45, highestmodseq=950))
    assert (cursor.last_uid, cursor.uidnext, cursor.highestmodseq) == (44, 45, 950)
    assert decide(cursor, replace(SAME, uidnext=45, highestmodseq=950)) == (
        FolderAction.NONE,
        "unchanged",
    )

    # a new cursor (UIDNEXT not yet taken) is saved with the server's, though nothing is new
    fresh = replace(SYNCED, uidnext=0, highestmodseq=None)
    assert fresh.advance(SAME)
    assert (fresh.last_uid, fresh.uidnext, fresh.highestmodseq) == (40, 41, 900)


def test_rescans_are_counted_per_day_and_refused_beyond_the_limit() -> None:
    start = datetime(2026, 12, 2, 8, tzinfo=UTC)
    cursor = replace(SYNCED)
    assert rescan_allowed(cursor, start, 2)
    assert rescan_allowed(cursor, start + timedelta(hours=1), 2)
    assert not rescan_allowed(cursor, start + timedelta(hours=23), 2)
    assert (cursor.resets, cursor.resets_since) == (2, start)
    # the day that began with the first rescan is over: a new one begins with this rescan
    assert rescan_allowed(cursor, start + timedelta(days=1), 2)
    assert (cursor.resets, cursor.resets_since) == (1, start + timedelta(days=1))
