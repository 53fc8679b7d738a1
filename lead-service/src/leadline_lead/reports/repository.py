"""The activity report query."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_lead.models import lead, timeline_event


async def activity(
    session: AsyncSession, company_id: uuid.UUID, start: datetime, end: datetime
) -> Sequence[Row[Any]]:
    """Personal mail per UTC ISO week (Monday start) and the lead's current stage, in [start,
    end)."""
    e = timeline_event.c
    week = func.date_trunc("week", func.timezone("UTC", e.occurred_at)).label("week_start")
    stmt = (
        select(
            week,
            lead.c.stage,
            func.count().filter(e.direction == "outbound").label("sent"),
            func.count().filter(e.direction == "inbound").label("received"),
        )
        .select_from(timeline_event.join(lead, lead.c.id == e.lead_id))
        .where(
            e.company_id == company_id,
            e.occurred_at >= start,
            e.occurred_at < end,
            e.category == "personal",
            e.kind != "bounce",
        )
        .group_by(literal_column("1"), lead.c.stage)
        .order_by(literal_column("1"), lead.c.stage)
    )
    return (await session.execute(stmt)).all()
