"""HTTP API of Smart Mail: send, look at, list and resend messages; the public unsubscribe endpoint.

Resend keeps the message's Message-ID.  The user resends because the first
attempt's fate is unknown (R21); if that first copy did arrive, the same
Message-ID lets the recipient's mail client, the Sent-folder sync and the
lead's timeline (one entry per Message-ID, R12) see one message, not two.
"""

from __future__ import annotations

import html
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse

from leadline_kit.db import Session
from leadline_kit.identity import Caller
from leadline_kit.outbox import enqueue
from leadline_kit.pagination import Page, decode_position, encode_position
from leadline_proto.events import LeadUnsubscribedPayload, LeadUnsubscribedV1
from leadline_send.context import Context
from leadline_send.database import autocommit
from leadline_send.messages import repository, service
from leadline_send.messages.schemas import BatchIn, BatchOut, MessageIn, MessageOut
from leadline_send.messages.unsubscribe_token import read_token
from leadline_send.models import outbox
from leadline_send.problems import MessageNotFound, UnsubscribeLinkInvalid
from leadline_send.states import MessageState

router = APIRouter(prefix="/v1", tags=["messages"])


@router.post("/messages", status_code=202, response_model=MessageOut)
async def send_message(
    body: MessageIn,
    caller: Caller,
    context: Context,
    request: Request,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> MessageOut:
    key = service.check_idempotency_key(idempotency_key)
    # The insert is one statement, idempotent by its unique key: autocommit (the wake-up of the
    # workers that follows it needs no transaction of its own).
    db = request.app.state.runtime.db
    async with autocommit(db) as session:
        return await service.create_message(session, db, context, caller, body, key)


@router.post("/messages/batch", status_code=202, response_model=BatchOut)
async def send_messages(
    body: BatchIn, caller: Caller, context: Context, request: Request
) -> BatchOut:
    """Up to 100 messages in one request and one transaction: all are queued, or none (the problem
    names the first bad one by ``index``).  Each item may carry its own ``idempotency_key``.  Quota
    is checked as for one message: 429 only when not even one can go out now; beyond what fits,
    messages wait as ``deferred`` until their account's window frees."""
    async with request.app.state.runtime.db.session() as session:
        return BatchOut(
            items=await service.create_messages(session, context, caller, body.messages)
        )


@router.get("/messages/{message_id:uuid}", response_model=MessageOut)
async def get_message(message_id: uuid.UUID, caller: Caller, session: Session) -> MessageOut:
    row = await repository.by_id(
        session, caller.company_id, message_id, service.sender_scope(caller)
    )
    if row is None:
        raise MessageNotFound("no such message")
    return service.to_out(row._mapping)


@router.get("/messages", response_model=Page[MessageOut])
async def list_messages(
    caller: Caller,
    session: Session,
    state: MessageState | None = None,
    user_id: uuid.UUID | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Page[MessageOut]:
    after = decode_position(cursor)
    scope = service.sender_scope(caller)
    if scope and user_id and user_id != scope:
        return Page[MessageOut](items=[])
    rows = await repository.page(
        session,
        caller.company_id,
        state=state,
        user_id=scope or user_id,
        after=after,
        limit=limit + 1,
    )
    items = [service.to_out(r._mapping) for r in rows[:limit]]
    next_cursor = (
        encode_position(rows[limit - 1].created_at, rows[limit - 1].id)
        if len(rows) > limit
        else None
    )
    return Page[MessageOut](items=items, next_cursor=next_cursor)


@router.post("/messages/{message_id:uuid}/resend", status_code=202, response_model=MessageOut)
async def resend_message(message_id: uuid.UUID, caller: Caller, request: Request) -> MessageOut:
    async with request.app.state.runtime.db.session() as session:
        return await service.resend(session, caller, message_id)


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>{title}</h1>{body}</body></html>"
    )


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, tags=["unsubscribe"])
async def unsubscribe_page(token: str, context: Context) -> HTMLResponse:
    """Public (no API key).  A GET only shows a button: link scanners prefetch GETs (RFC 8058)."""
    found = read_token(context.settings.unsubscribe_secret.get_secret_value(), token)
    if found is None:
        raise UnsubscribeLinkInvalid("this unsubscribe link is not valid")
    address = html.escape(found[1])
    return _page(
        "Unsubscribe",
        f"<p>Stop marketing mail to {address}?</p><form method='post'>"
        "<button type='submit' name='List-Unsubscribe' value='One-Click'>Unsubscribe"
        "</button></form>",
    )


@router.post("/unsubscribe/{token}", tags=["unsubscribe"])
async def unsubscribe(
    token: str, context: Context, session: Session, request: Request
) -> HTMLResponse:
    """Public (no API key).  RFC 8058 one-click: marks the address unsubscribed; repeat calls are
    harmless."""
    found = read_token(context.settings.unsubscribe_secret.get_secret_value(), token)
    if found is None:
        raise UnsubscribeLinkInvalid("this unsubscribe link is not valid")
    company_id, address = found
    lead_id = await repository.lead_for_address(session, company_id, address)
    if await repository.add_unsubscribe(session, company_id, address, lead_id):
        await enqueue(
            session,
            outbox,
            LeadUnsubscribedV1(
                company_id=company_id,
                payload=LeadUnsubscribedPayload(address=address, lead_id=lead_id),
            ),
        )
    return _page("Unsubscribed", f"<p>{html.escape(address)} will get no more marketing mail.</p>")
