"""Signing in with Gmail / Microsoft: start (the caller's own mailbox, R1) and the provider's callback (public)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from leadline_kit.identity import IDENTITY_HEADER, Caller, Identity, current_identity
from leadline_sync.context import Context
from leadline_sync.mailbox import service
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
async def start_sign_in(provider: str, caller: Caller, context: Context, body: SignInStart | None = None) -> SignInLink:
    """Begin connecting the caller's own mailbox by signing in with the provider (OAuth2 + PKCE)."""
    link = await flow.start(context, caller, provider, (body or SignInStart()).smtp_use)
    return SignInLink(authorization_url=link.url, expires_at=link.expires_at)


async def optional_caller(request: Request) -> Identity | None:
    """The caller when the request carries an identity (a CRM page passing the redirect on), else None."""
    if IDENTITY_HEADER not in request.headers:
        return None
    return await current_identity(request)


@router.get("/v1/mail-sync/oauth/callback")
async def finish_sign_in(
    context: Context,
    caller: Annotated[Identity | None, Depends(optional_caller)],
    code: Annotated[str | None, Query(max_length=4096)] = None,
    state: Annotated[str | None, Query(max_length=256)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
) -> SignInDone:
    """Where the provider sends the browser back (public: the state names the user). Called with a user's
    key (a CRM page that received the redirect), the sign-in must be that user's own, or nothing is saved."""
    mailbox_id = await flow.callback(context, code, state, error, caller)
    async with context.db.session() as session:
        row = await service.mailbox_by_id(session, mailbox_id)
    assert row is not None
    return SignInDone(mailbox_id=str(row.id), address=row.address, provider=row.provider, status=row.status)
