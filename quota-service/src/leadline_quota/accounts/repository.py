"""Every query of the sending accounts' stored limit layers (``service.py`` decides; the reserve
path's account lock is in ``reservations/repository.py``)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_quota.models import sending_account


async def accounts(
    session: AsyncSession, company_id: uuid.UUID, after: str | None, limit: int
) -> list[Any]:
    """Up to ``limit`` of the company's accounts ordered by key, starting after ``after``."""
    query = select(sending_account).where(sending_account.c.company_id == company_id)
    if after is not None:
        query = query.where(sending_account.c.account_key > after)
    return list(
        (await session.execute(query.order_by(sending_account.c.account_key).limit(limit))).all()
    )


async def account(session: AsyncSession, company_id: uuid.UUID, account_key: str) -> Any:
    return (
        await session.execute(
            select(sending_account).where(
                sending_account.c.company_id == company_id,
                sending_account.c.account_key == account_key,
            )
        )
    ).first()


async def upsert(
    session: AsyncSession, company_id: uuid.UUID, account_key: str, values: dict[str, Any]
) -> Any:
    """The account's row with ``values`` set (created if unknown so far)."""
    statement = insert(sending_account).values(
        company_id=company_id, account_key=account_key, **values
    )
    return (
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[sending_account.c.company_id, sending_account.c.account_key],
                set_=values,
            ).returning(*sending_account.c)
        )
    ).one()
