"""HTTP endpoints the gateway serves itself: companies, users, API keys, and the operator's
provisioning.

Routes authenticated by an operator's token (the bootstrap token for ``POST /v1/companies``, the
operator token under ``/v1/operator/``) check it before anything else, the body included: without
the token nobody learns even how a valid body looks.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.routing import APIRoute

from leadline_gateway.accounts import schemas, service
from leadline_gateway.auth import authenticate_operator, bearer_matches
from leadline_gateway.context import GatewayContext
from leadline_gateway.mailer import SystemMailer
from leadline_gateway.problems import InvalidBootstrapToken
from leadline_kit.db import Session
from leadline_kit.errors import RoleForbidden
from leadline_kit.identity import Identity
from leadline_kit.pagination import Page

router = APIRouter(prefix="/v1")


def token_first(check: Callable[[Request], None]) -> type[APIRoute]:
    """A route class whose ``check`` of the request runs before the body is read or validated."""

    class TokenFirstRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def checked(request: Request) -> Response:
                check(request)
                return await handler(request)

            return checked

    return TokenFirstRoute


def _bootstrap_token(request: Request) -> None:
    settings = request.app.state.runtime.settings
    if not bearer_matches(
        request.headers.get("authorization"), settings.bootstrap_token.get_secret_value()
    ):
        raise InvalidBootstrapToken(
            "creating a company needs the bootstrap token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _operator_token(request: Request) -> None:
    token = request.app.state.runtime.settings.operator_token
    authenticate_operator(
        request.headers.get("authorization"), token.get_secret_value() if token else None
    )


bootstrap_router = APIRouter(prefix="/v1", route_class=token_first(_bootstrap_token))
operator_router = APIRouter(
    prefix="/v1/operator", route_class=token_first(_operator_token), tags=["operator"]
)


async def api_caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Identity:
    context: GatewayContext = request.app.state.runtime.context_of(GatewayContext)
    return await context.authenticator.authenticate(authorization)


Caller = Annotated[Identity, Depends(api_caller)]


async def administrator(caller: Caller) -> Identity:
    if not caller.is_admin:
        raise RoleForbidden("only administrators may do this")
    return caller


Admin = Annotated[Identity, Depends(administrator)]


@bootstrap_router.post(
    "/companies",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.CompanyCreated,
    tags=["companies"],
    summary="Create a company, its first administrator and an API key (bootstrap token)",
)
async def create_company(data: schemas.CompanyCreate, session: Session) -> schemas.CompanyCreated:
    return await service.create_company(session, data)


@operator_router.post(
    "/companies/{company_id}/users",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.UserProvisioned,
    summary="Provision a user and their first API key for a CRM with its own login (operator "
    "token; no tenant administrator in the loop)",
)
async def provision_user(
    company_id: uuid.UUID, data: schemas.UserProvision, session: Session, request: Request
) -> schemas.UserProvisioned:
    return await service.provision_user(
        session, company_id, data, request.app.state.runtime.settings.api_keys_per_user
    )


@operator_router.post(
    "/companies/{company_id}/users/{user_id}/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.ApiKeyOut,
    summary="Make a provisioned user another API key, e.g. at each sign-in (operator token)",
)
async def provision_api_key(
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    data: schemas.ApiKeyCreate,
    session: Session,
    request: Request,
) -> schemas.ApiKeyOut:
    return await service.provision_api_key(
        session, company_id, user_id, data, request.app.state.runtime.settings.api_keys_per_user
    )


@router.get("/company", response_model=schemas.CompanyOut, tags=["companies"])
async def get_company(caller: Caller, session: Session) -> schemas.CompanyOut:
    return await service.get_company(session, caller)


@router.patch(
    "/company",
    response_model=schemas.CompanyOut,
    tags=["companies"],
    summary=(
        "Change company settings: name, own domains, own-domain blocklist switch, mailbox limit"
    ),
)
async def update_company(
    data: schemas.CompanyPatch, caller: Admin, session: Session
) -> schemas.CompanyOut:
    return await service.update_company(session, caller, data)


@router.get("/users", response_model=Page[schemas.UserOut], tags=["users"])
async def list_users(
    caller: Admin,
    session: Session,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Page[schemas.UserOut]:
    items, next_cursor = await service.list_users(session, caller, cursor, limit)
    return Page(items=items, next_cursor=next_cursor)


def _invitations(request: Request) -> tuple[SystemMailer, timedelta]:
    runtime = request.app.state.runtime
    return runtime.context_of(GatewayContext).mailer, timedelta(
        hours=runtime.settings.invitation_hours
    )


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.UserInvited,
    tags=["users"],
    summary=(
        "Invite a user: a one-time code goes to the user's address by email (never in this answer)"
    ),
)
async def create_user(
    data: schemas.UserCreate, caller: Admin, session: Session, request: Request
) -> schemas.UserInvited:
    return await service.create_user(session, caller, data, *_invitations(request))


@router.post(
    "/users/{user_id}/invitation",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.InvitationOut,
    tags=["users"],
    summary="Mail the user a new invitation code; earlier ones stop working",
)
async def reinvite_user(
    user_id: uuid.UUID, caller: Admin, session: Session, request: Request
) -> schemas.InvitationOut:
    return await service.reinvite(session, caller, user_id, *_invitations(request))


@router.post(
    "/invitations/claim",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.ApiKeyOut,
    tags=["users"],
    summary="Claim your first API key with the code mailed to you (no API key needed)",
)
async def claim_invitation(
    data: schemas.InvitationClaim, session: Session, request: Request
) -> schemas.ApiKeyOut:
    return await service.claim_invitation(
        session, data, request.client.host if request.client else None
    )


@router.get("/users/{user_id}", response_model=schemas.UserOut, tags=["users"])
async def get_user(user_id: uuid.UUID, caller: Caller, session: Session) -> schemas.UserOut:
    if not caller.is_admin and caller.user_id != user_id:
        raise RoleForbidden("only administrators may see other users")
    return await service.get_user(session, caller, user_id)


@router.patch("/users/{user_id}", response_model=schemas.UserOut, tags=["users"])
async def update_user(
    user_id: uuid.UUID, data: schemas.UserPatch, caller: Admin, session: Session
) -> schemas.UserOut:
    return await service.update_user(session, caller, user_id, data)


@router.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["users"])
async def delete_user(user_id: uuid.UUID, caller: Admin, session: Session) -> Response:
    await service.delete_user(session, caller, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.ApiKeyOut,
    tags=["users"],
    summary="Create an API key for yourself (shown once)",
)
async def create_api_key(
    data: schemas.ApiKeyCreate, caller: Caller, session: Session, request: Request
) -> schemas.ApiKeyOut:
    return await service.create_api_key(
        session, caller, data, request.app.state.runtime.settings.api_keys_per_user
    )


@router.get(
    "/api-keys",
    response_model=Page[schemas.ApiKeyInfo],
    tags=["users"],
    summary="Your API keys that are not revoked; administrators: every such key of the company",
)
async def list_api_keys(
    caller: Caller,
    session: Session,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Page[schemas.ApiKeyInfo]:
    items, next_cursor = await service.list_api_keys(session, caller, cursor, limit)
    return Page(items=items, next_cursor=next_cursor)


@router.delete(
    "/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["users"],
    summary="Revoke an API key (your own; administrators: any of the company's); refused at once",
)
async def revoke_api_key(key_id: uuid.UUID, caller: Caller, session: Session) -> Response:
    await service.revoke_api_key(session, caller, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
