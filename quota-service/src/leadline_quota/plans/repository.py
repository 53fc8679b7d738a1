"""Every query of company plans and the synced-email usage (``service.py`` decides)."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_quota.models import company, synced_email_usage


async def plan_name(session: AsyncSession, company_id: uuid.UUID) -> str | None:
    name: str | None = await session.scalar(
        select(company.c.plan).where(company.c.company_id == company_id)
    )
    return name


async def set_plan_name(
    session: AsyncSession, company_id: uuid.UUID, name: str, now: datetime
) -> None:
    statement = insert(company).values(company_id=company_id, plan=name, updated_at=now)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[company.c.company_id], set_={"plan": name, "updated_at": now}
        )
    )


async def lock_usage(
    session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID, day: date
) -> int:
    """The user's synced emails counted on ``day``, their row locked (made if missing) until the end
    of the transaction, so that concurrent asks of one user add up exactly."""
    key = {"company_id": company_id, "user_id": user_id, "day": day}
    await session.execute(insert(synced_email_usage).values(**key, used=0).on_conflict_do_nothing())
    where = [synced_email_usage.c[name] == value for name, value in key.items()]
    return int(
        (
            await session.execute(select(synced_email_usage.c.used).where(*where).with_for_update())
        ).scalar_one()
    )


async def set_usage(
    session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID, day: date, used: int
) -> None:
    key = {"company_id": company_id, "user_id": user_id, "day": day}
    where = [synced_email_usage.c[name] == value for name, value in key.items()]
    await session.execute(update(synced_email_usage).where(*where).values(used=used))


async def usage_on(session: AsyncSession, company_id: uuid.UUID, day: date) -> dict[uuid.UUID, int]:
    """Per user of the company, the synced emails counted on ``day``."""
    rows = (
        await session.execute(
            select(synced_email_usage.c.user_id, synced_email_usage.c.used).where(
                synced_email_usage.c.company_id == company_id, synced_email_usage.c.day == day
            )
        )
    ).all()
    return {row.user_id: int(row.used) for row in rows}


async def prune_usage(session: AsyncSession, before: date) -> None:
    """Forget synced-email counts of the days before ``before``."""
    # unscoped: housekeeping of every company: days that are over
    await session.execute(synced_email_usage.delete().where(synced_email_usage.c.day < before))
