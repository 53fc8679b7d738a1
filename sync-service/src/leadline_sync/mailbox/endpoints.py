"""Mail Sync HTTP API: the caller's own mailbox (R1), providers, errors, domain check;
administrators' list."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import Row

from leadline_kit.db import Session
from leadline_kit.errors import NotFound, RoleForbidden, Unprocessable
from leadline_kit.identity import Admin, Caller
from leadline_kit.pagination import Page, decode_position, encode_position
from leadline_mail.addresses import address_domain
from leadline_sync.context import Context, SyncContext
from leadline_sync.domain_check import check_domain
from leadline_sync.mailbox import connect as connection
from leadline_sync.mailbox import repository, service, why
from leadline_sync.mailbox.schemas import (
    ConnectionTest,
    ConnectRequest,
    DomainCheck,
    ErrorEntry,
    FolderCompleteness,
    FolderProgress,
    MailboxOut,
    MailboxSummary,
    MessageAnswer,
    ProviderOut,
    ServerPresetOut,
    ServerSettingsOut,
)
from leadline_sync.mailbox.states import COUNTS_FOR_BILLING, MailboxStatus
from leadline_sync.oauth.apps import DEFAULTS
from leadline_sync.problems import MailboxNotConnected
from leadline_sync.providers import ServerPreset, providers
from leadline_sync.sync import audit
from leadline_sync.sync.audit import FolderCounts

router = APIRouter(tags=["mail-sync"])


def _preset(preset: ServerPreset | None) -> ServerPresetOut | None:
    return (
        None
        if preset is None
        else ServerPresetOut(host=preset.host, port=preset.port, tls=preset.tls)
    )


def _oauth2_note(provider: str, configured: bool) -> str:
    if provider not in DEFAULTS:
        return ""
    if configured:
        return f"Sign in with the provider: POST /v1/mail-sync/oauth/{provider}/start."
    return (
        "Signing in with the provider (OAuth2) is not set up on this server: connect with an app "
        "password."
    )


@router.get("/v1/mail-sync/providers")
async def list_providers(caller: Caller, context: Context) -> list[ProviderOut]:
    return [
        ProviderOut(
            id=p.id,
            name=p.name,
            imap=_preset(p.imap),
            smtp=_preset(p.smtp),
            host_from_domain=p.host_from_domain,
            provider_saves_sent=p.provider_saves_sent,
            note=p.note,
            oauth2=p.id in context.oauth_apps,
            oauth2_note=_oauth2_note(p.id, p.id in context.oauth_apps),
        )
        for p in providers().values()
    ]


def _completeness(counts: FolderCounts | None) -> FolderCompleteness | None:
    if counts is None:
        return None
    stored = {"lead_mail", "damaged_lead_mail", "bounce", "complaint"}
    return FolderCompleteness(
        messages_on_server=counts.on_server,
        examined=counts.examined,
        lead_mail_stored=counts.by_reason.get("lead_mail", 0)
        + counts.by_reason.get("damaged_lead_mail", 0),
        bounces_stored=counts.by_reason.get("bounce", 0),
        complaints_stored=counts.by_reason.get("complaint", 0),
        not_stored={
            reason: n for reason, n in sorted(counts.by_reason.items()) if reason not in stored
        },
        unreadable_kept_raw=counts.by_reason.get("damaged_lead_mail", 0),
        not_yet_examined=counts.not_yet_examined,
        missing=counts.missing,
        last_audit_at=counts.audited_at,
        last_audit_refetched=counts.audit_found,
    )


def _mailbox_out(
    row: Row[Any],
    cursors: list[Row[Any]],
    context: SyncContext,
    counts: dict[str, FolderCounts] | None = None,
) -> MailboxOut:
    def server(prefix: str) -> ServerSettingsOut:
        pin = getattr(row, f"{prefix}_pinned_sha256")
        return ServerSettingsOut(
            host=getattr(row, f"{prefix}_host"),
            port=getattr(row, f"{prefix}_port"),
            tls=getattr(row, f"{prefix}_tls"),
            username=getattr(row, f"{prefix}_username"),
            self_signed=pin is not None,
            certificate_sha256=pin,
        )

    return MailboxOut(
        id=row.id,
        user_id=row.user_id,
        address=row.address,
        provider=row.provider,
        auth=row.auth,
        status=row.status,
        status_reason=_reason(row, context),
        sync_mode=row.current_sync_mode,
        last_synced_at=row.last_synced_at,
        smtp_use=row.smtp_use,
        imap=server("imap"),
        smtp=server("smtp"),
        sent_folder=row.sent_folder,
        connected_at=row.connected_at,
        history_completed_at=row.history_completed_at,
        address_proven_at=row.address_proven_at,
        address_proven_by=row.address_proven_by,
        folders=[
            FolderProgress(
                folder=c.folder,
                name=c.name,
                last_uid=c.last_uid,
                history_last_uid=c.history_last_uid,
                history_examined_down_to=c.history_floor,
                history_complete=c.last_uid >= c.history_last_uid and c.history_floor <= 1,
                completeness=_completeness((counts or {}).get(c.folder)),
            )
            for c in cursors
        ],
    )


def _reason(row: Row[Any], context: SyncContext) -> str:
    return service.waiting_reason(row, context.clock(), context.settings.sync_rotation_seconds)


async def _own_mailbox(session: Session, caller: Caller, context: SyncContext) -> MailboxOut:
    row = await repository.own_mailbox(session, caller.company_id, caller.user_id)
    if row is None:
        raise MailboxNotConnected("Mail Sync is not connected")
    cursors = await repository.folder_cursors(session, row.id)
    return _mailbox_out(row, cursors, context, await audit.folder_counts(session, row.id))


@router.put("/v1/mail-sync")
async def connect_mailbox(
    body: ConnectRequest, caller: Caller, context: Context, session: Session
) -> MailboxOut:
    """Connect the caller's own mailbox, or update its settings (a new password resumes from the
    cursor)."""
    await connection.connect(context, caller, body)
    return await _own_mailbox(session, caller, context)


@router.get("/v1/mail-sync")
async def get_mailbox(caller: Caller, context: Context, session: Session) -> MailboxOut:
    return await _own_mailbox(session, caller, context)


@router.delete("/v1/mail-sync", status_code=204)
async def disconnect_mailbox(
    caller: Caller, context: Context, keep_history: Annotated[bool, Query()] = True
) -> Response:
    """Disable sync; ``keep_history=false`` removes what it brought into the timelines (R11)."""
    await connection.disconnect(context, caller, keep_history)
    return Response(status_code=204)


@router.post("/v1/mail-sync/test")
async def test_mailbox(body: ConnectRequest, caller: Caller, context: Context) -> ConnectionTest:
    """Check the IMAP and the SMTP login without saving anything."""
    return await connection.test_connection(context, body)


@router.get("/v1/mail-sync/errors")
async def list_errors(
    caller: Caller,
    session: Session,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Page[ErrorEntry]:
    before = decode_position(cursor)
    rows = await repository.error_page(
        session, caller.company_id, caller.user_id, limit + 1, before
    )
    items = [
        ErrorEntry(id=r.id, occurred_at=r.occurred_at, kind=r.kind, message=r.message, fix=r.fix)
        for r in rows[:limit]
    ]
    next_cursor = (
        encode_position(items[-1].occurred_at, items[-1].id) if len(rows) > limit else None
    )
    return Page[ErrorEntry](items=items, next_cursor=next_cursor)


@router.get("/v1/mail-sync/messages")
async def why_message(
    caller: Caller,
    context: Context,
    session: Session,
    message_id: Annotated[
        str, Query(min_length=1, max_length=998, description="the mail's Message-ID header")
    ],
    mailbox_id: Annotated[
        uuid.UUID | None,
        Query(description="administrators: any mailbox of the company; others: their own"),
    ] = None,
) -> MessageAnswer:
    """Why is this mail (not) on the timeline: where the sync found it and what became of it."""
    if any(c in message_id for c in "\0\r\n"):
        raise Unprocessable("message_id must not contain line breaks or NUL characters")
    normalized = audit.MessageKeys.normalized(message_id)
    if normalized is None:
        raise Unprocessable("message_id is not a Message-ID (<id@host>)")
    if mailbox_id is None:
        row = await repository.latest_mailbox(session, caller.company_id, caller.user_id)
        if row is None:
            raise MailboxNotConnected("Mail Sync is not connected")
    else:
        row = await repository.company_mailbox(session, caller.company_id, mailbox_id)
        if row is None:
            raise NotFound("No mailbox of the company has this id")
        if row.user_id != caller.user_id and not caller.is_admin:
            raise RoleForbidden("only administrators may ask about another user's mailbox")
    places, searched = await why.answer(context, session, row, normalized)
    return MessageAnswer(
        message_id=normalized, mailbox_id=row.id, places=places, server_searched=searched
    )


@router.get("/v1/mail-sync/domain-check")
async def domain_check(caller: Caller, context: Context, session: Session) -> DomainCheck:
    """DMARC and DKIM for the domain of the caller's synced address (R18)."""
    row = await repository.active_mailbox(session, caller.company_id, caller.user_id)
    if row is None:
        raise MailboxNotConnected("Mail Sync is not connected")
    return await check_domain(address_domain(row.address), context.resolver)


@router.get("/v1/mailboxes")
async def list_mailboxes(
    caller: Admin,
    context: Context,
    session: Session,
    cursor: str | None = None,
    status: MailboxStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Page[MailboxSummary]:
    """Every mailbox of the company with its status; ``connection_failed`` ones do not count for
    billing (R8)."""
    after = decode_position(cursor)
    rows = await repository.mailbox_page(session, caller.company_id, limit + 1, status, after)
    items = [
        MailboxSummary(
            id=r.id,
            user_id=r.user_id,
            address=r.address,
            provider=r.provider,
            status=r.status,
            status_reason=_reason(r, context),
            sync_mode=r.current_sync_mode,
            last_synced_at=r.last_synced_at,
            counts_for_billing=r.status in COUNTS_FOR_BILLING,
            connected_at=r.connected_at,
            updated_at=r.updated_at,
        )
        for r in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_position(last.created_at, last.id)
    return Page[MailboxSummary](items=items, next_cursor=next_cursor)
