"""Every query on blocklist entries and company settings."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, delete, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_lead.models import blocklist_entry, company_settings


async def insert_entry(session: AsyncSession, values: dict[str, Any]) -> Row[Any] | None:
    """The new entry, or None when the company already blocks that value."""
    stmt = (
        insert(blocklist_entry)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(*blocklist_entry.c)
    )
    return (await session.execute(stmt)).first()


async def delete_entry(
    session: AsyncSession, company_id: uuid.UUID, entry_id: uuid.UUID
) -> Row[Any] | None:
    stmt = (
        delete(blocklist_entry)
        .where(blocklist_entry.c.id == entry_id, blocklist_entry.c.company_id == company_id)
        .returning(*blocklist_entry.c)
    )
    return (await session.execute(stmt)).first()


async def list_entries(
    session: AsyncSession,
    company_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[Row[Any]]:
    stmt = select(*blocklist_entry.c).where(blocklist_entry.c.company_id == company_id)
    if after is not None:
        stmt = stmt.where(
            or_(
                blocklist_entry.c.created_at < after[0],
                and_(blocklist_entry.c.created_at == after[0], blocklist_entry.c.id < after[1]),
            )
        )
    stmt = stmt.order_by(blocklist_entry.c.created_at.desc(), blocklist_entry.c.id.desc()).limit(
        limit
    )
    return (await session.execute(stmt)).all()


async def get_settings(
    session: AsyncSession, company_id: uuid.UUID, *, for_update: bool = False
) -> Row[Any] | None:
    stmt = select(*company_settings.c).where(company_settings.c.company_id == company_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).first()


async def save_settings(
    session: AsyncSession,
    company_id: uuid.UUID,
    domains: list[str],
    block_own_domains: bool,
    as_of: datetime,
) -> bool:
    """Store the company's settings unless newer ones are already stored; True when stored."""
    base = insert(company_settings).values(
        company_id=company_id,
        domains=domains,
        block_own_domains=block_own_domains,
        updated_at=as_of,
    )
    stmt = base.on_conflict_do_update(
        index_elements=[company_settings.c.company_id],
        set_={
            "domains": base.excluded.domains,
            "block_own_domains": base.excluded.block_own_domains,
            "updated_at": base.excluded.updated_at,
        },
        where=company_settings.c.updated_at <= base.excluded.updated_at,
    ).returning(company_settings.c.company_id)
    return (await session.execute(stmt)).first() is not None
