"""Companies, users and API keys: the rules, with their events written through the outbox."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_gateway import models
from leadline_gateway.accounts import repository, schemas
from leadline_gateway.auth import new_api_key
from leadline_gateway.mailer import SystemMailer
from leadline_gateway.problems import (
    ApiKeyLimit,
    ApiKeyNotFound,
    CompanyNotFound,
    InvitationNotFound,
    LastAdministrator,
    UserExists,
    UserNotFound,
)
from leadline_kit.identity import Identity
from leadline_kit.outbox import enqueue
from leadline_kit.pagination import decode_position, encode_position
from leadline_proto.events import (
    CompanyPayload,
    CompanyUpdatedV1,
    UserDeletedV1,
    UserPayload,
    UserUpdatedV1,
)

Listed = TypeVar("Listed", bound=BaseModel)


def _company_event(row: Any) -> CompanyUpdatedV1:
    return CompanyUpdatedV1(
        company_id=row.id,
        payload=CompanyPayload(
            name=row.name,
            domains=list(row.domains),
            block_own_domains=row.block_own_domains,
            mailbox_limit=row.mailbox_limit,
        ),
    )


def _user_payload(row: Any) -> UserPayload:
    return UserPayload(user_id=row.id, email=row.email, name=row.name, role=row.role)


async def create_company(
    session: AsyncSession, data: schemas.CompanyCreate
) -> schemas.CompanyCreated:
    company_id, user_id = uuid.uuid4(), uuid.uuid4()
    company = await repository.insert_company(
        session, company_id, data.name, sorted(set(data.domains))
    )
    admin = await repository.insert_user(
        session,
        company_id,
        data.administrator.email,
        data.administrator.name,
        "administrator",
        user_id,
    )
    key = await _create_key(session, company_id, user_id, "bootstrap")
    await enqueue(
        session,
        models.outbox,
        _company_event(company),
        UserUpdatedV1(company_id=company_id, payload=_user_payload(admin)),
    )
    return schemas.CompanyCreated(
        company=schemas.CompanyOut.model_validate(company, from_attributes=True),
        administrator=schemas.UserOut.model_validate(admin, from_attributes=True),
        api_key=key,
    )


async def get_company(session: AsyncSession, caller: Identity) -> schemas.CompanyOut:
    row = await repository.company(session, caller.company_id)
    return schemas.CompanyOut.model_validate(row, from_attributes=True)


async def update_company(
    session: AsyncSession, caller: Identity, data: schemas.CompanyPatch
) -> schemas.CompanyOut:
    changes = data.model_dump(exclude_unset=True)
    for field in ("name", "domains", "block_own_domains"):
        # only mailbox_limit may be set to null (unlimited)
        if field in changes and changes[field] is None:
            del changes[field]
    if "domains" in changes:
        changes["domains"] = sorted(set(changes["domains"]))
    row = await (
        repository.update_company(session, caller.company_id, changes)
        if changes
        else repository.company(session, caller.company_id)
    )
    if changes:
        await enqueue(session, models.outbox, _company_event(row))
    return schemas.CompanyOut.model_validate(row, from_attributes=True)


async def list_users(
    session: AsyncSession, caller: Identity, cursor: str | None, limit: int
) -> tuple[list[schemas.UserOut], str | None]:
    rows = await repository.users(session, caller.company_id, decode_position(cursor), limit + 1)
    return _page(rows, limit, schemas.UserOut)


def _page(rows: list[Any], limit: int, model: type[Listed]) -> tuple[list[Listed], str | None]:
    """One page of rows (oldest first, by (created_at, id); one more than ``limit`` if there are
    more)."""
    items = [model.model_validate(r, from_attributes=True) for r in rows[:limit]]
    next_cursor = (
        encode_position(rows[limit - 1].created_at, rows[limit - 1].id)
        if len(rows) > limit
        else None
    )
    return items, next_cursor


async def _user_row(session: AsyncSession, caller: Identity, user_id: uuid.UUID) -> Any:
    row = await repository.user(session, caller.company_id, user_id)
    if row is None:
        raise UserNotFound("no such user in your company")
    return row


async def get_user(session: AsyncSession, caller: Identity, user_id: uuid.UUID) -> schemas.UserOut:
    return schemas.UserOut.model_validate(
        await _user_row(session, caller, user_id), from_attributes=True
    )


def invitation_text(email: str, code: str, expires_at: datetime) -> str:
    return (
        f"You have been invited to Leadline as {email}.\n\n"
        f"Your invitation code: {code}\n\n"
        "Claim your own API key with it (once, before "
        f"{expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC):\n\n"
        "  POST /v1/invitations/claim\n"
        f'  {{"invitation_code": "{code}", "email": "{email}"}}\n\n'
        "Nobody else has this code: if you did not expect this message, ignore it.\n"
    )


async def invite(
    session: AsyncSession, caller: Identity, user: Any, mailer: SystemMailer, valid_for: timedelta
) -> schemas.InvitationOut:
    """A new one-time code for ``user``, mailed to the user's address and only there (R29); the
    user's earlier invitations are withdrawn.  A mailer failure raises, so nothing is committed."""
    code = secrets.token_urlsafe(24)
    await repository.withdraw_invitations(session, caller.company_id, user.id)
    row = await repository.insert_invitation(
        session, caller.company_id, user.id, user.email, _sha256(code), caller.user_id, valid_for
    )
    await mailer.send(
        user.email, "Your Leadline invitation", invitation_text(user.email, code, row.expires_at)
    )
    return schemas.InvitationOut(
        sent_to=row.email, created_at=row.created_at, expires_at=row.expires_at
    )


async def _insert_user(
    session: AsyncSession, company_id: uuid.UUID, email: str, name: str, role: str
) -> Any:
    try:
        row = await repository.insert_user(session, company_id, email, name, role)
    except IntegrityError as exc:
        raise UserExists("a user with this email already exists in the company") from exc
    await enqueue(
        session, models.outbox, UserUpdatedV1(company_id=company_id, payload=_user_payload(row))
    )
    return row


async def create_user(
    session: AsyncSession,
    caller: Identity,
    data: schemas.UserCreate,
    mailer: SystemMailer,
    valid_for: timedelta,
) -> schemas.UserInvited:
    row = await _insert_user(session, caller.company_id, data.email, data.name, data.role)
    invitation = await invite(session, caller, row, mailer, valid_for)
    return schemas.UserInvited(
        **schemas.UserOut.model_validate(row, from_attributes=True).model_dump(),
        invitation=invitation,
    )


async def reinvite(
    session: AsyncSession,
    caller: Identity,
    user_id: uuid.UUID,
    mailer: SystemMailer,
    valid_for: timedelta,
) -> schemas.InvitationOut:
    return await invite(
        session, caller, await _user_row(session, caller, user_id), mailer, valid_for
    )


async def claim_invitation(
    session: AsyncSession, data: schemas.InvitationClaim, claimed_from: str | None
) -> schemas.ApiKeyOut:
    """The invitee exchanges the code mailed to them, with their address, for their own first API
    key: once, before it expires; the claim (when, which key, from where) is recorded."""
    row = await repository.claim_invitation(
        session, _sha256(data.invitation_code), data.email, claimed_from
    )
    if row is None:
        raise InvitationNotFound(
            "this invitation code is unknown, was already used, has expired or was sent to another "
            "address; ask your administrator for a new invitation",
        )
    key = await _create_key(session, row.company_id, row.user_id, data.key_name)
    await repository.record_claimed_key(session, row.company_id, row.id, key.id)
    return key


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def update_user(
    session: AsyncSession, caller: Identity, user_id: uuid.UUID, data: schemas.UserPatch
) -> schemas.UserOut:
    current = await _user_row(session, caller, user_id)
    changes = {k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None}
    if (
        current.role == "administrator"
        and changes.get("role", "administrator") != "administrator"
        and await repository.administrators(session, caller.company_id) <= 1
    ):
        raise LastAdministrator("a company keeps at least one administrator")
    if not changes:
        return schemas.UserOut.model_validate(current, from_attributes=True)
    row = await repository.update_user(session, caller.company_id, user_id, changes)
    await enqueue(
        session,
        models.outbox,
        UserUpdatedV1(company_id=caller.company_id, payload=_user_payload(row)),
    )
    return schemas.UserOut.model_validate(row, from_attributes=True)


async def delete_user(session: AsyncSession, caller: Identity, user_id: uuid.UUID) -> None:
    current = await _user_row(session, caller, user_id)
    if (
        current.role == "administrator"
        and await repository.administrators(session, caller.company_id) <= 1
    ):
        raise LastAdministrator("a company keeps at least one administrator")
    await repository.delete_user(session, caller.company_id, user_id)
    await enqueue(
        session,
        models.outbox,
        UserDeletedV1(company_id=caller.company_id, payload=_user_payload(current)),
    )


async def _create_key(
    session: AsyncSession,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    name: str,
    expires_at: datetime | None = None,
) -> schemas.ApiKeyOut:
    key = new_api_key()
    row = await repository.insert_api_key(
        session, key.key_id, company_id, user_id, name, key.secret_sha256, expires_at
    )
    return schemas.ApiKeyOut(
        id=row.id,
        name=row.name,
        user_id=row.user_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        key=key.token,
    )


async def create_api_key(
    session: AsyncSession, caller: Identity, data: schemas.ApiKeyCreate, limit: int
) -> schemas.ApiKeyOut:
    # keys are only ever made for oneself: a key acts as its user, and nobody may act as another
    # (R1)
    return await _create_capped_key(session, caller.company_id, caller.user_id, data, limit)


async def _create_capped_key(
    session: AsyncSession,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    data: schemas.ApiKeyCreate,
    limit: int,
) -> schemas.ApiKeyOut:
    # the user's row is locked so that two concurrent creations cannot both pass the cap
    if await repository.user(session, company_id, user_id, for_update=True) is None:
        raise UserNotFound("no such user in this company")
    if await repository.active_keys(session, company_id, user_id) >= limit:
        raise ApiKeyLimit(
            f"the user holds {limit} active API keys, the most a user may hold; revoke one first "
            "(DELETE /v1/api-keys/{id})",
            limit=limit,
        )
    return await _create_key(session, company_id, user_id, data.name, data.expires_at)


async def provision_user(
    session: AsyncSession, company_id: uuid.UUID, data: schemas.UserProvision, limit: int
) -> schemas.UserProvisioned:
    """The operator's way for a CRM that signs its users in itself (SSO): the user and their first
    key at once, handed to the CRM's backend, with no tenant administrator in the loop (R29)."""
    if not await repository.company_exists(session, company_id):
        raise CompanyNotFound("no such company")
    row = await _insert_user(session, company_id, data.email, data.name, data.role)
    key = await _create_capped_key(
        session, company_id, row.id, schemas.ApiKeyCreate(name=data.key_name), limit
    )
    return schemas.UserProvisioned(
        user=schemas.UserOut.model_validate(row, from_attributes=True), api_key=key
    )


async def provision_api_key(
    session: AsyncSession,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    data: schemas.ApiKeyCreate,
    limit: int,
) -> schemas.ApiKeyOut:
    return await _create_capped_key(session, company_id, user_id, data, limit)


async def list_api_keys(
    session: AsyncSession, caller: Identity, cursor: str | None, limit: int
) -> tuple[list[schemas.ApiKeyInfo], str | None]:
    only_own = None if caller.is_admin else caller.user_id
    rows = await repository.api_keys(
        session, caller.company_id, only_own, decode_position(cursor), limit + 1
    )
    return _page(rows, limit, schemas.ApiKeyInfo)


async def revoke_api_key(session: AsyncSession, caller: Identity, key_id: uuid.UUID) -> None:
    only_own = None if caller.is_admin else caller.user_id
    if not await repository.revoke_api_key(session, caller.company_id, key_id, only_own):
        raise ApiKeyNotFound("no such API key of yours")
