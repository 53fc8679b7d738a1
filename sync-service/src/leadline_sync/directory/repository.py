"""Every query of the matching directory: the service's copy of leads, blocklist and company settings, kept
from events (``mailbox/consumers.py``; the lead-address copy's own statements are still there, becoming a kit
replica shared with the send service) and read by the matching rules (``matching.py``, one load per header
batch)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_sync.models import blocklist_entry, company, lead_address

# --- read by matching ----------------------------------------------------------------------------------------


async def lead_since(session: AsyncSession, company_id: uuid.UUID, addresses: Collection[str]) -> dict[str, datetime]:
    """Each of ``addresses`` that is a lead's, with the earliest creation of its leads."""
    rows = await session.execute(
        select(lead_address.c.address, func.min(lead_address.c.lead_created_at))
        .where(lead_address.c.company_id == company_id, lead_address.c.address.in_(list(addresses)))
        .group_by(lead_address.c.address)
    )
    return {address: created for address, created in rows}


async def blocklist(session: AsyncSession, company_id: uuid.UUID) -> list[Row[Any, Any]]:
    """The company's blocklist entries: (kind, value)."""
    return list(
        await session.execute(
            select(blocklist_entry.c.kind, blocklist_entry.c.value).where(blocklist_entry.c.company_id == company_id)
        )
    )


async def company_settings(session: AsyncSession, company_id: uuid.UUID) -> Row[Any, Any] | None:
    """The company's domains and whether its own domains are blocked."""
    return (
        await session.execute(
            select(company.c.domains, company.c.block_own_domains).where(company.c.company_id == company_id)
        )
    ).first()


# --- kept from events ----------------------------------------------------------------------------------------


async def add_blocklist_entry(
    session: AsyncSession, company_id: uuid.UUID, entry_id: uuid.UUID, kind: str, value: str
) -> None:
    await session.execute(
        insert(blocklist_entry)
        .values(company_id=company_id, entry_id=entry_id, kind=kind, value=value)
        .on_conflict_do_nothing()
    )


async def remove_blocklist_entry(session: AsyncSession, company_id: uuid.UUID, entry_id: uuid.UUID) -> None:
    await session.execute(
        delete(blocklist_entry).where(
            blocklist_entry.c.company_id == company_id, blocklist_entry.c.entry_id == entry_id
        )
    )


async def save_company(
    session: AsyncSession, company_id: uuid.UUID, domains: list[str], block_own_domains: bool
) -> None:
    statement = insert(company).values(company_id=company_id, domains=domains, block_own_domains=block_own_domains)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[company.c.company_id],
            set_={"domains": statement.excluded.domains, "block_own_domains": statement.excluded.block_own_domains},
        )
    )
