"""Every query on leads and their addresses."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, delete, func, or_, select, union, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_lead.addresses import domain_of
from leadline_lead.models import company_user, lead, lead_address


async def insert_lead(session: AsyncSession, values: dict[str, Any]) -> Row[Any]:
    return (await session.execute(lead.insert().values(**values).returning(*lead.c))).one()


async def claim_addresses(
    session: AsyncSession, company_id: uuid.UUID, lead_id: uuid.UUID, addresses: Sequence[str]
) -> set[str]:
    """Give ``addresses`` to the lead; returns those another lead of the company already holds."""
    rows = [
        {
            "company_id": company_id,
            "address": a,
            "domain": domain_of(a),
            "lead_id": lead_id,
            "position": i,
        }
        for i, a in enumerate(addresses)
    ]
    stmt = (
        insert(lead_address)
        .on_conflict_do_update(
            index_elements=[lead_address.c.company_id, lead_address.c.address],
            set_={"position": insert(lead_address).excluded.position},
            where=lead_address.c.lead_id == lead_id,
        )
        .returning(lead_address.c.address)
    )
    claimed = set((await session.execute(stmt, rows)).scalars()) if rows else set()
    return set(addresses) - claimed


async def release_addresses_except(
    session: AsyncSession, company_id: uuid.UUID, lead_id: uuid.UUID, keep: Sequence[str]
) -> None:
    await session.execute(
        delete(lead_address).where(
            lead_address.c.company_id == company_id,
            lead_address.c.lead_id == lead_id,
            lead_address.c.address.not_in(list(keep)),
        )
    )


async def get_lead(
    session: AsyncSession, company_id: uuid.UUID, lead_id: uuid.UUID, *, for_update: bool = False
) -> Row[Any] | None:
    stmt = select(*lead.c).where(lead.c.id == lead_id, lead.c.company_id == company_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).first()


async def update_lead(
    session: AsyncSession, company_id: uuid.UUID, lead_id: uuid.UUID, values: dict[str, Any]
) -> Row[Any]:
    stmt = (
        update(lead)
        .where(lead.c.id == lead_id, lead.c.company_id == company_id)
        .values(**values, updated_at=func.now())
        .returning(*lead.c)
    )
    return (await session.execute(stmt)).one()


async def delete_lead(session: AsyncSession, company_id: uuid.UUID, lead_id: uuid.UUID) -> None:
    await session.execute(delete(lead).where(lead.c.id == lead_id, lead.c.company_id == company_id))


async def addresses_of(
    session: AsyncSession, company_id: uuid.UUID, lead_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[str]]:
    if not lead_ids:
        return {}
    rows = await session.execute(
        select(lead_address.c.lead_id, lead_address.c.address)
        .where(lead_address.c.company_id == company_id, lead_address.c.lead_id.in_(list(lead_ids)))
        .order_by(lead_address.c.lead_id, lead_address.c.position, lead_address.c.address)
    )
    found: dict[uuid.UUID, list[str]] = defaultdict(list)
    for row in rows:
        found[row.lead_id].append(row.address)
    return found


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def list_leads(
    session: AsyncSession,
    company_id: uuid.UUID,
    *,
    query: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[Row[Any]]:
    """Newest first; ``query`` matches an address by prefix, or (without an ``@``) part of the name
    or account name.  Each way has its index (address prefix, trigrams); their hits are united."""
    stmt = select(*lead.c).where(lead.c.company_id == company_id)
    if query:
        pattern = _like_escape(query.lower())
        hits = select(lead_address.c.lead_id).where(
            lead_address.c.company_id == company_id,
            lead_address.c.address.like(pattern + "%", escape="\\"),
        )
        if "@" not in query:
            by_name = [
                select(lead.c.id).where(
                    lead.c.company_id == company_id,
                    func.lower(column).like("%" + pattern + "%", escape="\\"),
                )
                for column in (lead.c.name, lead.c.account_name)
            ]
            hits = union(hits, *by_name)  # type: ignore[assignment]
        stmt = stmt.where(lead.c.id.in_(hits))
    if after is not None:
        created_at, lead_id = after
        stmt = stmt.where(
            or_(
                lead.c.created_at < created_at,
                and_(lead.c.created_at == created_at, lead.c.id < lead_id),
            )
        )
    stmt = stmt.order_by(lead.c.created_at.desc(), lead.c.id.desc()).limit(limit)
    return (await session.execute(stmt)).all()


async def leads_by_address(
    session: AsyncSession, company_id: uuid.UUID, addresses: Sequence[str]
) -> dict[str, uuid.UUID]:
    if not addresses:
        return {}
    rows = await session.execute(
        select(lead_address.c.address, lead_address.c.lead_id).where(
            lead_address.c.company_id == company_id, lead_address.c.address.in_(list(addresses))
        )
    )
    return {row.address: row.lead_id for row in rows}


async def mark_bounced(
    session: AsyncSession, company_id: uuid.UUID, lead_id: uuid.UUID, at: datetime
) -> None:
    await session.execute(
        update(lead)
        .where(lead.c.company_id == company_id, lead.c.id == lead_id)
        .values(bounced_at=func.greatest(func.coalesce(lead.c.bounced_at, at), at))
    )


async def mark_complained(
    session: AsyncSession, company_id: uuid.UUID, lead_id: uuid.UUID, at: datetime
) -> None:
    await session.execute(
        update(lead)
        .where(lead.c.company_id == company_id, lead.c.id == lead_id)
        .values(
            complained_at=func.greatest(func.coalesce(lead.c.complained_at, at), at),
            updated_at=func.now(),
        )
    )


async def mark_unsubscribed(
    session: AsyncSession, company_id: uuid.UUID, lead_ids: Sequence[uuid.UUID], at: datetime
) -> None:
    if not lead_ids:
        return
    await session.execute(
        update(lead)
        .where(
            lead.c.company_id == company_id,
            lead.c.id.in_(list(lead_ids)),
            lead.c.unsubscribed_at.is_(None),
        )
        .values(unsubscribed_at=at, updated_at=func.now())
    )


async def save_user(
    session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID, *, deleted: bool, at: datetime
) -> None:
    """Keep a user of the company as its latest event says (a late, older event changes nothing)."""
    stmt = insert(company_user).values(
        user_id=user_id, company_id=company_id, deleted=deleted, updated_at=at
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[company_user.c.user_id],
            set_={"deleted": stmt.excluded.deleted, "updated_at": stmt.excluded.updated_at},
            where=and_(
                company_user.c.updated_at < stmt.excluded.updated_at,
                company_user.c.company_id == stmt.excluded.company_id,
            ),
        )
    )


async def is_user_of(session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    return (
        await session.scalar(
            select(company_user.c.user_id).where(
                company_user.c.user_id == user_id,
                company_user.c.company_id == company_id,
                company_user.c.deleted.is_(False),
            )
        )
        is not None
    )


async def names_of(
    session: AsyncSession, company_id: uuid.UUID, lead_ids: Sequence[uuid.UUID]
) -> list[Any]:
    """(id, name) of those of ``lead_ids`` that are the company's leads."""
    return list(
        (
            await session.execute(
                select(lead.c.id, lead.c.name).where(
                    lead.c.company_id == company_id, lead.c.id.in_(list(lead_ids))
                )
            )
        ).all()
    )


async def directory_counts(session: AsyncSession, company_id: uuid.UUID) -> Any:
    """The company's leads that have an address: how many, the newest's creation, and the database's
    now."""
    return (
        await session.execute(
            select(func.count(func.distinct(lead.c.id)), func.max(lead.c.created_at), func.now())
            .select_from(lead.join(lead_address, lead_address.c.lead_id == lead.c.id))
            .where(lead.c.company_id == company_id, lead_address.c.company_id == company_id)
        )
    ).one()
