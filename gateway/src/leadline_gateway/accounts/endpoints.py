"""HTTP endpoints the gateway serves itself: companies, users, API keys."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status

from leadline_gateway.accounts import schemas, service
from leadline_gateway.auth import ApiKeyAuthenticator, bearer_matches
from leadline_gateway.mailer import SystemMailer
from leadline_kit.db import Session
from leadline_kit.errors import Forbidden, Unauthorized
from leadline_kit.identity import Identity
from leadline_kit.pagination import Page

router = APIRouter(prefix="/v1")


async def api_caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Identity:
    authenticator: ApiKeyAuthenticator = request.app.state.runtime.extras["authenticator"]
    return await authenticator.authenticate(authorization)


Caller = Annotated[Identity, Depends(api_caller)]


async def administrator(caller: Caller) -> Identity:
    if not caller.is_admin:
        raise Forbidden("only administrators may do this", slug="role-forbidden")
    return caller


Admin = Annotated[Identity, Depends(administrator)]


@router.post("/companies", status_code=status.HTTP_201_CREATED, response_model=schemas.CompanyCreated,
             tags=["companies"], summary="Create a company, its first administrator and an API key")
async def create_company(data: schemas.CompanyCreate, session: Session, request: Request,
                         authorization: Annotated[str | None, Header()] = None) -> schemas.CompanyCreated:
    if not bearer_matches(authorization, request.app.state.runtime.settings.bootstrap_token.get_secret_value()):
        raise Unauthorized("creating a company needs the bootstrap token", slug="invalid-bootstrap-token")
    return await service.create_company(session, data)


@router.get("/company", response_model=schemas.CompanyOut, tags=["companies"])
async def get_company(caller: Caller, session: Session) -> schemas.CompanyOut:
    return await service.get_company(session, caller)


@router.patch("/company", response_model=schemas.CompanyOut, tags=["companies"],
              summary="Change company settings: name, own domains, own-domain blocklist switch, mailbox limit")
async def update_company(data: schemas.CompanyPatch, caller: Admin, session: Session) -> schemas.CompanyOut:
    return await service.update_company(session, caller, data)


@router.get("/users", response_model=Page[schemas.UserOut], tags=["users"])
async def list_users(caller: Admin, session: Session, cursor: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 50) -> Page[schemas.UserOut]:
    items, next_cursor = await service.list_users(session, caller, cursor, limit)
    return Page(items=items, next_cursor=next_cursor)


def _invitations(request: Request) -> tuple[SystemMailer, timedelta]:
    runtime = request.app.state.runtime
    return runtime.extras["mailer"], timedelta(hours=runtime.settings.invitation_hours)


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=schemas.UserInvited, tags=["users"],
             summary="Invite a user: a one-time code goes to the user's address by email (never in this answer)")
async def create_user(data: schemas.UserCreate, caller: Admin, session: Session,
                      request: Request) -> schemas.UserInvited:
    return await service.create_user(session, caller, data, *_invitations(request))


@router.post("/users/{user_id}/invitation", status_code=status.HTTP_201_CREATED,
             response_model=schemas.InvitationOut, tags=["users"],
             summary="Mail the user a new invitation code; earlier ones stop working")
async def reinvite_user(user_id: uuid.UUID, caller: Admin, session: Session,
                        request: Request) -> schemas.InvitationOut:
    return await service.reinvite(session, caller, user_id, *_invitations(request))


@router.post("/invitations/claim", status_code=status.HTTP_201_CREATED, response_model=schemas.ApiKeyOut,
             tags=["users"], summary="Claim your first API key with the code mailed to you (no API key needed)")
async def claim_invitation(data: schemas.InvitationClaim, session: Session, request: Request) -> schemas.ApiKeyOut:
    return await service.claim_invitation(session, data, request.client.host if request.client else None)


@router.get("/users/{user_id}", response_model=schemas.UserOut, tags=["users"])
async def get_user(user_id: uuid.UUID, caller: Caller, session: Session) -> schemas.UserOut:
    if not caller.is_admin and caller.user_id != user_id:
        raise Forbidden("only administrators may see other users", slug="role-forbidden")
    return await service.get_user(session, caller, user_id)


@router.patch("/users/{user_id}", response_model=schemas.UserOut, tags=["users"])
async def update_user(user_id: uuid.UUID, data: schemas.UserPatch, caller: Admin,
                      session: Session) -> schemas.UserOut:
    return await service.update_user(session, caller, user_id, data)


@router.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["users"])
async def delete_user(user_id: uuid.UUID, caller: Admin, session: Session) -> Response:
    await service.delete_user(session, caller, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, response_model=schemas.ApiKeyOut, tags=["users"],
             summary="Create an API key for yourself (shown once)")
async def create_api_key(data: schemas.ApiKeyCreate, caller: Caller, session: Session,
                         request: Request) -> schemas.ApiKeyOut:
    return await service.create_api_key(session, caller, data, request.app.state.runtime.settings.api_keys_per_user)


@router.get("/api-keys", response_model=Page[schemas.ApiKeyInfo], tags=["users"],
            summary="Your API keys that are not revoked; administrators: every such key of the company")
async def list_api_keys(caller: Caller, session: Session, cursor: str | None = None,
                        limit: Annotated[int, Query(ge=1, le=200)] = 50) -> Page[schemas.ApiKeyInfo]:
    items, next_cursor = await service.list_api_keys(session, caller, cursor, limit)
    return Page(items=items, next_cursor=next_cursor)


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["users"],
               summary="Revoke an API key (your own; administrators: any of the company's); refused at once")
async def revoke_api_key(key_id: uuid.UUID, caller: Caller, session: Session) -> Response:
    await service.revoke_api_key(session, caller, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
