"""Activity report HTTP endpoint."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from leadline_kit.db import Session
from leadline_kit.identity import Caller
from leadline_lead.reports import service
from leadline_lead.reports.schemas import ActivityReport

router = APIRouter(prefix="/v1/reports", tags=["reports"])


@router.get("/activity")
async def activity_report(
    session: Session, caller: Caller,
    date_from: Annotated[date | None, Query(alias="from", description="first day, UTC (default: 12 weeks ago)")] = None,
    date_to: Annotated[date | None, Query(alias="to", description="last day, UTC, inclusive (default: today)")] = None,
) -> ActivityReport:
    return await service.activity_report(session, caller, date_from, date_to)
