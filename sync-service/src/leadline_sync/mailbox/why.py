""" "Why is this mail not on the timeline?": what became of one Message-ID in one mailbox.

The answer comes from what the sync recorded while it examined the mail
(``sync/audit.py``: a keyed hash of each Message-ID with its folder and UID,
the reason per UID in the examined ranges), so that a message matching no
lead can be explained without keeping anything of it but that (R6):

- recorded: per place (folder, UID) the UID's reason: stored (then the lead
  service says whose timelines hold it; none, after sync was disabled with
  "remove", is R11), or left out by R5 / R6; a place whose range is gone is
  ``missing`` (the next audit examines it again);
- not recorded: the mailbox's server is searched with the mailbox's own login
  (``UID SEARCH HEADER Message-ID`` per folder, read-only, at most
  :data:`MAX_FOLDERS` folders, within :data:`SEARCH_SECONDS`).  Found in
  INBOX or Sent above the cursor: not examined yet, with where the sync stands
  (a plan-limit pause names R14); at or below the cursor: examined before
  Message-IDs were recorded (the range's reason) or ``missing``; in another
  folder: not synced (R4); nowhere: not on the server.  A disabled mailbox
  has no login left: it answers from the records only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit import rpc
from leadline_kit.sealing import CredentialError
from leadline_mail.imap import ImapClient, connect_imap
from leadline_mail.mime import parse_headers
from leadline_mail.net import ErrorKind, MailConnectionError
from leadline_proto.requests import MessageTimelineReply, MessageTimelineRequest
from leadline_proto.subjects import RPC_MESSAGE_TIMELINE
from leadline_sync.context import SyncContext
from leadline_sync.logins import imap_settings
from leadline_sync.mailbox import repository
from leadline_sync.mailbox.schemas import MessageOutcome, MessagePlace, SyncPosition, TimelinePlace
from leadline_sync.mailbox.states import MailboxStatus
from leadline_sync.sync import audit

log = logging.getLogger("leadline.sync.why")

MAX_FOLDERS = 50
SEARCH_SECONDS = 15.0
LOGOUT_SECONDS = 3.0
STORED = ("lead_mail", "damaged_lead_mail", "bounce", "complaint")
RULES = {
    "no_lead": "R6",
    "blocklisted": "R6",
    "own_domain": "R6",
    "before_lead": "R5",
    "bounce": "R17",
}


@dataclass(frozen=True)
class ServerPlace:
    name: str
    uidvalidity: int
    uid: int


async def answer(
    context: SyncContext, session: AsyncSession, row: Row[Any], message_id: str
) -> tuple[list[MessagePlace], bool]:
    """The places of ``message_id`` in mailbox ``row`` and what became of each; True if the server
    was searched."""
    keys = audit.MessageKeys(context.settings.credential_keys())
    cursors = {c.folder: c for c in await repository.folder_cursors(session, row.id)}
    places: list[MessagePlace] = []
    for record in await audit.examined_places(session, keys, row.id, message_id):
        cursor = cursors.get(record.folder)
        if cursor is None or cursor.uidvalidity != record.uidvalidity:
            continue  # an old numbering of the folder (forgotten with it)
        place = await _examined(
            context, session, row, record.folder, record.uidvalidity, record.uid, message_id
        )
        places.append(place.model_copy(update={"examined_at": record.examined_at}))
    if places:
        return places, False
    if row.status == MailboxStatus.DISABLED or row.credential_ciphertext is None:
        return [
            MessagePlace(
                outcome=MessageOutcome.SERVER_NOT_SEARCHED,
                explanation="The sync never examined a message with this Message-ID, and the "
                "server cannot be searched: sync is disabled for this mailbox.",
            )
        ], False
    try:
        found, searched_all = await _search_server(context, row, message_id)
    except (MailConnectionError, CredentialError, TimeoutError) as exc:
        detail = (
            exc.user_message
            if isinstance(exc, MailConnectionError)
            else "it did not answer in time"
        )
        if isinstance(exc, CredentialError):
            detail = "the saved password could not be read"
        log.info("mailbox %s: message search failed (%s)", row.id, type(exc).__name__)
        return [
            MessagePlace(
                outcome=MessageOutcome.SERVER_NOT_SEARCHED,
                explanation=f"The sync never examined a message with this Message-ID, and the "
                f"server could not be searched: {detail}",
            )
        ], False
    for server_place in found:
        role = _role(row, cursors, server_place.name)
        cursor = cursors.get(role) if role is not None else None
        if role is None:
            places.append(
                MessagePlace(
                    folder=server_place.name,
                    uid=server_place.uid,
                    outcome=MessageOutcome.NOT_SYNCED_FOLDER,
                    rule="R4",
                    explanation=f"It is in the folder {server_place.name!r}: Mail Sync reads only "
                    "the Inbox and the Sent folder, no other folders and no subfolders (R4).",
                )
            )
        elif (
            cursor is None
            or cursor.uidvalidity != server_place.uidvalidity
            or server_place.uid > cursor.last_uid
            # the history, read newest first, is not down there yet
            or server_place.uid < cursor.history_floor
        ):
            places.append(await _not_examined(session, row, role, server_place.uid, cursor))
        else:
            places.append(
                await _examined(
                    context,
                    session,
                    row,
                    role,
                    server_place.uidvalidity,
                    server_place.uid,
                    message_id,
                )
            )
    if not places:
        where = "any folder" if searched_all else f"the first {MAX_FOLDERS} folders"
        places.append(
            MessagePlace(
                outcome=MessageOutcome.NOT_ON_SERVER,
                explanation=f"The mail server has no message with this Message-ID in {where} of "
                f"the mailbox {row.address} (deleted, never received, or in another mailbox).",
            )
        )
    return places, True


def _role(row: Row[Any], cursors: dict[str, Row[Any]], name: str) -> str | None:
    """Which synced folder (R4) a server folder is, if any."""
    for role, cursor in cursors.items():
        if cursor.name == name:
            return role
    if name.upper() == "INBOX":
        return "inbox"
    return "sent" if row.sent_folder is not None and name == row.sent_folder else None


async def _examined(
    context: SyncContext,
    session: AsyncSession,
    row: Row[Any],
    folder: str,
    uidvalidity: int,
    uid: int,
    message_id: str,
) -> MessagePlace:
    reason = await audit.examined_reason(session, row.id, folder, uidvalidity, uid)
    if reason is None:
        return MessagePlace(
            folder=folder,
            uid=uid,
            outcome=MessageOutcome.MISSING,
            rule="R28",
            explanation="It is below where the sync stands but no record says it was examined (a "
            "lost batch, or a message the server did not list): the next completeness audit "
            "examines it.",
        )
    if reason not in STORED:
        return MessagePlace(
            folder=folder,
            uid=uid,
            outcome=MessageOutcome.NOT_STORED,
            rule=RULES.get(reason),
            reason=reason,
            explanation=f"Examined and not stored: {audit.REASONS.get(reason, reason)}.",
        )
    stored_at = await repository.synced_at(session, row.id, folder, message_id)
    outcome, rule, explanation, timeline = await _stored(
        context, row, reason, message_id, stored_at
    )
    return MessagePlace(
        folder=folder,
        uid=uid,
        outcome=outcome,
        rule=rule,
        reason=reason,
        explanation=explanation,
        stored_at=stored_at,
        timeline=timeline,
    )


async def _stored(
    context: SyncContext, row: Row[Any], reason: str, message_id: str, stored_at: datetime | None
) -> tuple[MessageOutcome, str | None, str, list[TimelinePlace]]:
    """What became of a message the sync published: whose timelines hold it (the lead service
    says)."""
    if reason == "bounce":
        return (
            MessageOutcome.STORED,
            "R17",
            (
                "A bounce: the lead's timeline shows it as a bounce of the mail it returns, not as "
                "a message of its own."
            ),
            [],
        )
    if reason == "complaint":
        return (
            MessageOutcome.STORED,
            "R16",
            "A complaint (feedback report) about mail to a lead: the lead's timeline shows it as a "
            "complaint about that mail, and the lead gets no more marketing mail.",
            [],
        )
    try:
        reply = await rpc.ask(
            context.nc,
            RPC_MESSAGE_TIMELINE,
            MessageTimelineRequest(company_id=row.company_id, message_id=message_id),
            MessageTimelineReply,
            context.settings.rpc_timeout_seconds,
        )
    except rpc.Unanswered as exc:
        return (
            MessageOutcome.STORED,
            None,
            (
                f"Published to the lead service; it did not say whose timeline holds it "
                f"({exc.reason})."
            ),
            [],
        )
    # stored because it is mail with a lead's address (R6); one that could not be fully read, kept
    # raw (R27)
    stored_by = "R27" if reason == "damaged_lead_mail" else "R6"
    timeline = [
        TimelinePlace(lead_id=e.lead_id, kind=e.kind, occurred_at=e.occurred_at)
        for e in reply.entries
    ]
    if timeline:
        leads = ", ".join(str(e.lead_id) for e in timeline)
        since = f" since {stored_at:%Y-%m-%d %H:%M:%S} UTC" if stored_at is not None else ""
        return (
            MessageOutcome.ON_TIMELINE,
            stored_by,
            f"On the timeline of lead {leads}{since}.",
            timeline,
        )
    if row.status == MailboxStatus.DISABLED:
        return (
            MessageOutcome.REMOVED,
            "R11",
            'It was on a lead\'s timeline; sync was disabled with "remove", which deleted the '
            "timeline events "
            "this mailbox brought (R11).",
            [],
        )
    return (
        MessageOutcome.STORED,
        stored_by,
        "Published to the lead service, but no lead's timeline holds it now (its lead was deleted, "
        "or the lead service has not applied it yet).",
        [],
    )


async def _not_examined(
    session: AsyncSession, row: Row[Any], role: str, uid: int, cursor: Row[Any] | None
) -> MessagePlace:
    position = SyncPosition(
        last_uid=cursor.last_uid if cursor is not None else 0,
        history_last_uid=cursor.history_last_uid if cursor is not None else 0,
        history_examined_down_to=cursor.history_floor if cursor is not None else 1,
        status=row.status,
        status_reason=row.status_reason,
    )
    paused = await repository.latest_error_kind(session, row.id) == ErrorKind.PLAN_LIMIT
    if paused:
        rule, why = (
            "R14",
            f"the plan's daily limit of synced emails is reached ({row.status_reason})",
        )
    elif row.status == MailboxStatus.ENABLED and uid < position.history_examined_down_to:
        rule, why = (
            "R28",
            (
                f"the historical sync reads {role} newest first and has examined it down to UID "
                f"{position.history_examined_down_to}"
            ),
        )
    elif row.status == MailboxStatus.ENABLED:
        rule, why = (
            "R28",
            f"the sync has read {role} up to UID {position.last_uid} and reads on from there",
        )
    else:
        rule, why = (
            "R28",
            f"the mailbox is {row.status}: {row.status_reason or 'sync is not running'}",
        )
    return MessagePlace(
        folder=role,
        uid=uid,
        outcome=MessageOutcome.NOT_EXAMINED_YET,
        rule=rule,
        reason=None,
        explanation=f"Not examined yet: {why}.",
        sync_position=position,
    )


async def _search_server(
    context: SyncContext, row: Row[Any], message_id: str
) -> tuple[list[ServerPlace], bool]:
    """Every place of ``message_id`` on the server (at most MAX_FOLDERS folders) and whether all
    were searched."""
    login = context.cipher.imap_login(row)
    async with asyncio.timeout(SEARCH_SECONDS):
        if row.auth == "oauth2":
            login = replace(login, access_token=await context.tokens.access_token(row.id))
        async with context.logins.slot(f"{login.host}:{login.port}"):
            client = await connect_imap(imap_settings(login, context.settings))
        try:
            return await _search_folders(client, row, message_id)
        finally:
            with contextlib.suppress(Exception):  # the answer does not wait for a slow goodbye
                async with asyncio.timeout(LOGOUT_SECONDS):
                    await client.logout()


async def _search_folders(
    client: ImapClient, row: Row[Any], message_id: str
) -> tuple[list[ServerPlace], bool]:
    names = [
        f.name
        for f in await client.list_folders()
        if not {"\\noselect", "\\nonexistent"} & {flag.lower() for flag in f.flags}
    ]
    first = ["INBOX", *([row.sent_folder] if row.sent_folder in names else [])]
    ordered = first + sorted(n for n in names if n not in first and n.upper() != "INBOX")
    found: list[ServerPlace] = []
    for name in ordered[:MAX_FOLDERS]:
        status = await client.select(name)
        uids = await client.uids_with_header("Message-ID", message_id)
        if not uids:
            continue
        # the server matches substrings: keep the messages whose Message-ID is exactly this one
        for header in await client.fetch_headers(uids):
            if parse_headers(header.header).message_id == message_id:
                found.append(ServerPlace(name, status.uidvalidity, header.uid))
    return found, len(ordered) <= MAX_FOLDERS
