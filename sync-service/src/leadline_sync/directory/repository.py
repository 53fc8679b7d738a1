"""Every query of the matching directory: the service's copy of leads, blocklist and company
settings, kept from events (``mailbox/consumers.py``; the lead addresses through the kit's replica,
:mod:`leadline_kit.lead_addresses`), the lead rechecks a lead's new addresses leave, and the reads
of the matching rules (``matching.py``, one load per header batch)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, Row, Text, case, delete, func, literal, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_sync.mailbox.states import MailboxStatus
from leadline_sync.models import blocklist_entry, company, lead_address, lead_recheck, mailbox

# --- read by matching
# ----------------------------------------------------------------------------------------


async def lead_since(
    session: AsyncSession, company_id: uuid.UUID, addresses: Collection[str]
) -> dict[str, datetime]:
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
            select(blocklist_entry.c.kind, blocklist_entry.c.value).where(
                blocklist_entry.c.company_id == company_id
            )
        )
    )


async def company_settings(session: AsyncSession, company_id: uuid.UUID) -> Row[Any, Any] | None:
    """The company's domains and whether its own domains are blocked."""
    return (
        await session.execute(
            select(company.c.domains, company.c.block_own_domains).where(
                company.c.company_id == company_id
            )
        )
    ).first()


# --- kept from events
# ----------------------------------------------------------------------------------------


async def add_blocklist_entry(
    session: AsyncSession, company_id: uuid.UUID, entry_id: uuid.UUID, kind: str, value: str
) -> None:
    await session.execute(
        insert(blocklist_entry)
        .values(company_id=company_id, entry_id=entry_id, kind=kind, value=value)
        .on_conflict_do_nothing()
    )


async def remove_blocklist_entry(
    session: AsyncSession, company_id: uuid.UUID, entry_id: uuid.UUID
) -> None:
    await session.execute(
        delete(blocklist_entry).where(
            blocklist_entry.c.company_id == company_id, blocklist_entry.c.entry_id == entry_id
        )
    )


async def save_company(
    session: AsyncSession, company_id: uuid.UUID, domains: list[str], block_own_domains: bool
) -> None:
    statement = insert(company).values(
        company_id=company_id, domains=domains, block_own_domains=block_own_domains
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[company.c.company_id],
            set_={
                "domains": statement.excluded.domains,
                "block_own_domains": statement.excluded.block_own_domains,
            },
        )
    )


async def recheck_lead(
    session: AsyncSession,
    company_id: uuid.UUID,
    lead_id: uuid.UUID,
    addresses: list[str],
    created_at: datetime,
) -> None:
    """A ``lead_recheck`` row for every connected mailbox of the company: its sync looks for the
    lead's mail again (R5 bounds it by date: from the lead's creation, unless the mailbox was
    connected after it)."""
    since = case((mailbox.c.connected_at >= created_at, None), else_=literal(created_at))
    rows = select(
        mailbox.c.id, literal(lead_id), literal(addresses, ARRAY(Text)), since, func.now()
    ).where(mailbox.c.company_id == company_id, mailbox.c.status != MailboxStatus.DISABLED)
    statement = insert(lead_recheck).from_select(
        ["mailbox_id", "lead_id", "addresses", "since", "created_at"], rows
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[lead_recheck.c.mailbox_id, lead_recheck.c.lead_id],
            set_={
                "addresses": func.array_cat(lead_recheck.c.addresses, statement.excluded.addresses),
                # NULL (the whole history) wins over a date; LEAST would ignore it
                "since": case(
                    (or_(lead_recheck.c.since.is_(None), statement.excluded.since.is_(None)), None),
                    else_=func.least(lead_recheck.c.since, statement.excluded.since),
                ),
                "created_at": statement.excluded.created_at,
            },
        )
    )
