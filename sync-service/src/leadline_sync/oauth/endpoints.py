"""Signing in with Gmail / Microsoft: start (the caller's own mailbox, R1) and the provider's
callback (public)."""

from __future__ import annotations

import urllib.parse
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from leadline_kit.identity import IDENTITY_HEADER, Caller, Identity, current_identity
from leadline_sync.context import Context, SyncContext
from leadline_sync.mailbox import repository as mailboxes
from leadline_sync.mailbox.schemas import SmtpUse
from leadline_sync.oauth import flow

router = APIRouter(tags=["mail-sync"])


class SignInStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    smtp_use: SmtpUse = "general"


class SignInLink(BaseModel):
    authorization_url: str = Field(
        description="send the user's browser here; the provider brings it back to the callback"
    )
    expires_at: datetime


class SignInDone(BaseModel):
    mailbox_id: str
    address: str
    provider: str
    status: str


@router.post("/v1/mail-sync/oauth/{provider}/start")
async def start_sign_in(
    provider: str, caller: Caller, context: Context, body: SignInStart | None = None
) -> SignInLink:
    """Begin connecting the caller's own mailbox by signing in with the provider (OAuth2 + PKCE)."""
    link = await flow.start(context, caller, provider, (body or SignInStart()).smtp_use)
    return SignInLink(authorization_url=link.url, expires_at=link.expires_at)


async def optional_caller(request: Request) -> Identity | None:
    """The caller when the request carries an identity (a CRM page passing the redirect on), else
    None."""
    if IDENTITY_HEADER not in request.headers:
        return None
    return await current_identity(request)


class SignInHandOff(BaseModel):
    sign_in: str = Field(
        description="one-time: POST it to /v1/mail-sync/oauth/finish with the starter's key"
    )
    expires_at: datetime
    detail: str


class SignInFinish(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sign_in: str = Field(min_length=1, max_length=256)


async def _done(context: SyncContext, mailbox_id: uuid.UUID) -> SignInDone:
    async with context.db.session() as session:
        row = await mailboxes.mailbox_by_id(session, mailbox_id)
    assert row is not None
    return SignInDone(
        mailbox_id=str(row.id), address=row.address, provider=row.provider, status=row.status
    )


@router.get(
    "/v1/mail-sync/oauth/callback",
    response_model=SignInDone | SignInHandOff,
    responses={303: {"description": "without a key: on to the app's return URL with `?sign_in=`"}},
)
async def finish_sign_in(
    context: Context,
    caller: Annotated[Identity | None, Depends(optional_caller)],
    code: Annotated[str | None, Query(max_length=4096)] = None,
    state: Annotated[str | None, Query(max_length=256)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
) -> Response | SignInDone | SignInHandOff:
    """Where the provider sends the browser back (public: the state names the user who started).

    With that user's key (a CRM page that received the redirect passes it on) the mailbox is
    connected, and with another user's key nothing is.  Without a key nothing is connected yet: the
    browser gets a one-time `sign_in` (sent on to the app's return URL when it has one) that only
    the starter's key can finish with `POST /v1/mail-sync/oauth/finish`, so a sign-in started by
    someone else never lands on their user."""
    answer = await flow.callback(context, code, state, error, caller)
    if isinstance(answer, uuid.UUID):
        return await _done(context, answer)
    if answer.return_url is not None:
        parts = urllib.parse.urlsplit(answer.return_url)
        query = urllib.parse.urlencode(
            [*urllib.parse.parse_qsl(parts.query), ("sign_in", answer.sign_in)]
        )
        return RedirectResponse(
            urllib.parse.urlunsplit(parts._replace(query=query)),
            status_code=303,
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )
    return SignInHandOff(
        sign_in=answer.sign_in,
        expires_at=answer.expires_at,
        detail=(
            "finish with POST /v1/mail-sync/oauth/finish and the key of the user who started this "
            "sign-in"
        ),
    )


@router.post("/v1/mail-sync/oauth/finish")
async def finish_handed_off_sign_in(
    caller: Caller, context: Context, body: SignInFinish
) -> SignInDone:
    """Connect the caller's mailbox from a sign-in the callback handed back; only its starter may
    (R1)."""
    return await _done(context, await flow.finish(context, caller, body.sign_in))
