"""Every query of companies, users, invitations and API keys (``service.py`` holds the rules).

The API-key lookup of every request (:func:`request_key`, for ``auth.py``) is the gateway's hot
path: plain SQL on asyncpg (``Database.plain``), prepared once per connection; the rest is
SQLAlchemy Core on a session.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import Table, and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_gateway import models


async def insert_company(
    session: AsyncSession, company_id: uuid.UUID, name: str, domains: list[str]
) -> Any:
    return (
        await session.execute(
            insert(models.company)
            .values(id=company_id, name=name, domains=domains)
            .returning(*models.company.c)
        )
    ).one()


async def company(session: AsyncSession, company_id: uuid.UUID) -> Any:
    return (
        await session.execute(select(models.company).where(models.company.c.id == company_id))
    ).one()


async def company_exists(session: AsyncSession, company_id: uuid.UUID) -> bool:
    return (
        await session.scalar(select(models.company.c.id).where(models.company.c.id == company_id))
        is not None
    )


async def update_company(
    session: AsyncSession, company_id: uuid.UUID, changes: dict[str, Any]
) -> Any:
    statement = update(models.company).where(models.company.c.id == company_id)
    return (await session.execute(statement.values(**changes).returning(*models.company.c))).one()


async def users(
    session: AsyncSession, company_id: uuid.UUID, after: tuple[Any, ...] | None, limit: int
) -> list[Any]:
    """Up to ``limit`` of the company's users, oldest first, after the position ``after``."""
    return await _page(session, models.user, models.user.c.company_id == company_id, after, limit)


async def api_keys(
    session: AsyncSession,
    company_id: uuid.UUID,
    user_id: uuid.UUID | None,
    after: tuple[Any, ...] | None,
    limit: int,
) -> list[Any]:
    """Up to ``limit`` of the company's unrevoked API keys (of ``user_id`` only, when given), oldest
    first."""
    where = and_(models.api_key.c.company_id == company_id, models.api_key.c.revoked_at.is_(None))
    if user_id is not None:
        where = and_(where, models.api_key.c.user_id == user_id)
    return await _page(session, models.api_key, where, after, limit)


async def _page(
    session: AsyncSession, table: Table, where: Any, after: tuple[Any, ...] | None, limit: int
) -> list[Any]:
    # unscoped: both callers pass the company filter as where
    query = select(table).where(where)
    if after:
        query = query.where(func.row(table.c.created_at, table.c.id) > func.row(*after))
    return list(
        (await session.execute(query.order_by(table.c.created_at, table.c.id).limit(limit))).all()
    )


async def insert_user(
    session: AsyncSession,
    company_id: uuid.UUID,
    email: str,
    name: str,
    role: str,
    user_id: uuid.UUID | None = None,
) -> Any:
    """The new user's row; an IntegrityError (its savepoint rolled back) when the company has that
    email."""
    async with session.begin_nested():
        return (
            await session.execute(
                insert(models.user)
                .values(
                    id=user_id or uuid.uuid4(),
                    company_id=company_id,
                    email=email,
                    name=name,
                    role=role,
                )
                .returning(*models.user.c)
            )
        ).one()


async def user(
    session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID, *, for_update: bool = False
) -> Any:
    query = select(models.user).where(
        models.user.c.id == user_id, models.user.c.company_id == company_id
    )
    return (await session.execute(query.with_for_update() if for_update else query)).first()


async def administrators(session: AsyncSession, company_id: uuid.UUID) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(models.user)
        .where(models.user.c.company_id == company_id, models.user.c.role == "administrator")
    )
    return int(count or 0)


async def update_user(
    session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID, changes: dict[str, Any]
) -> Any:
    return (
        await session.execute(
            update(models.user)
            .where(models.user.c.id == user_id, models.user.c.company_id == company_id)
            .values(**changes)
            .returning(*models.user.c)
        )
    ).one()


async def delete_user(session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID) -> None:
    await session.execute(
        models.user.delete().where(
            models.user.c.id == user_id, models.user.c.company_id == company_id
        )
    )


async def withdraw_invitations(
    session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID
) -> None:
    await session.execute(
        update(models.invitation)
        .where(
            models.invitation.c.company_id == company_id,
            models.invitation.c.user_id == user_id,
            models.invitation.c.claimed_at.is_(None),
            models.invitation.c.withdrawn_at.is_(None),
        )
        .values(withdrawn_at=func.now())
    )


async def insert_invitation(
    session: AsyncSession,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    email: str,
    code_sha256: str,
    invited_by: uuid.UUID,
    valid_for: timedelta,
) -> Any:
    return (
        await session.execute(
            insert(models.invitation)
            .values(
                id=uuid.uuid4(),
                company_id=company_id,
                user_id=user_id,
                email=email,
                code_sha256=code_sha256,
                invited_by=invited_by,
                expires_at=func.now() + valid_for,
            )
            .returning(*models.invitation.c)
        )
    ).one()


async def claim_invitation(
    session: AsyncSession, code_sha256: str, email: str, claimed_from: str | None
) -> Any:
    """The open invitation with this code and address, now claimed (None if there is none)."""
    return (
        await session.execute(
            # unscoped: the invitee has no identity yet; the secret code and its address pick the row  # noqa: E501
            update(models.invitation)
            .where(
                models.invitation.c.code_sha256 == code_sha256,
                models.invitation.c.email == email,
                models.invitation.c.claimed_at.is_(None),
                models.invitation.c.withdrawn_at.is_(None),
                models.invitation.c.expires_at > func.now(),
            )
            .values(claimed_at=func.now(), claimed_from=claimed_from)
            .returning(
                models.invitation.c.id, models.invitation.c.user_id, models.invitation.c.company_id
            )
        )
    ).first()


async def record_claimed_key(
    session: AsyncSession, company_id: uuid.UUID, invitation_id: uuid.UUID, key_id: uuid.UUID
) -> None:
    await session.execute(
        update(models.invitation)
        .where(
            models.invitation.c.company_id == company_id, models.invitation.c.id == invitation_id
        )
        .values(claimed_api_key_id=key_id)
    )


async def insert_api_key(
    session: AsyncSession,
    key_id: uuid.UUID,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    name: str,
    secret_sha256: str,
    expires_at: datetime | None,
) -> Any:
    return (
        await session.execute(
            insert(models.api_key)
            .values(
                id=key_id,
                company_id=company_id,
                user_id=user_id,
                name=name,
                secret_sha256=secret_sha256,
                expires_at=expires_at,
            )
            .returning(*models.api_key.c)
        )
    ).one()


def active_key() -> Any:
    return and_(
        models.api_key.c.revoked_at.is_(None),
        or_(models.api_key.c.expires_at.is_(None), models.api_key.c.expires_at > func.now()),
    )


async def active_keys(session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(models.api_key)
        .where(
            models.api_key.c.company_id == company_id,
            models.api_key.c.user_id == user_id,
            active_key(),
        )
    )
    return int(count or 0)


async def revoke_api_key(
    session: AsyncSession, company_id: uuid.UUID, key_id: uuid.UUID, user_id: uuid.UUID | None
) -> bool:
    """Revoke the company's unrevoked key (of ``user_id`` only, when given); whether there was
    one."""
    statement = update(models.api_key).where(
        models.api_key.c.id == key_id,
        models.api_key.c.company_id == company_id,
        models.api_key.c.revoked_at.is_(None),
    )
    if user_id is not None:
        statement = statement.where(models.api_key.c.user_id == user_id)
    found = await session.execute(
        statement.values(revoked_at=func.now()).returning(models.api_key.c.id)
    )
    return found.first() is not None


# Through SQLAlchemy the lookup's checkout, statement handling and row cost more of the gateway's
# CPU per request than the query.
# unscoped: authentication, before any company is known; the key and its secret name it
KEY_LOOKUP = """
SELECT k.secret_sha256, u.company_id, u.id, u.role
FROM api_key k JOIN "user" u ON u.id = k.user_id
WHERE k.id = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
"""


async def request_key(conn: asyncpg.Connection, key_id: uuid.UUID) -> asyncpg.Record | None:
    """The live key ``key_id`` (not revoked, not expired): its secret's digest and its user's
    company, id and role."""
    row: asyncpg.Record | None = await conn.fetchrow(KEY_LOOKUP, key_id)
    return row
