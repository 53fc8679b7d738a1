"""Activity report HTTP endpoint."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BeforeValidator

from leadline_kit.db import Session
from leadline_kit.identity import Caller
from leadline_lead.reports import service
from leadline_lead.reports.schemas import ActivityReport

router = APIRouter(prefix="/v1/reports", tags=["reports"])


def _calendar_day(value: object) -> object:
    """Only ``YYYY-MM-DD``: pydantic alone would also read ``to=0`` as a Unix time (1970-01-01)."""
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("a day is written YYYY-MM-DD")
    return value


Day = Annotated[date, BeforeValidator(_calendar_day)]


@router.get("/activity")
async def activity_report(
    session: Session,
    caller: Caller,
    date_from: Annotated[
        Day | None, Query(alias="from", description="first day, UTC (default: 12 weeks ago)")
    ] = None,
    date_to: Annotated[
        Day | None, Query(alias="to", description="last day, UTC, inclusive (default: today)")
    ] = None,
) -> ActivityReport:
    return await service.activity_report(session, caller, date_from, date_to)
