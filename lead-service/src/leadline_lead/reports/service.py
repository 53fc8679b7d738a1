"""Activity report (R19): personal emails sent and received per pipeline stage, per ISO week.

Choices, stated so the numbers can be read right:
- "personal" is every synced email and every Smart Mail whose category is
  not ``marketing``; bounces are not emails and do not count;
- the stage is the lead's *current* stage (stage history is not kept), so a
  week's figures move when a lead moves through the pipeline;
- a message to two leads counts once for each lead (per lead stage);
- weeks are ISO weeks in UTC, Monday to Sunday; ``date_from``/``date_to`` are
  inclusive UTC dates, at most 366 days apart.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.identity import Identity
from leadline_lead.problems import InvalidDateRange
from leadline_lead.reports import repository
from leadline_lead.reports.schemas import ActivityReport, ActivityRow

MAX_RANGE_DAYS = 366
DEFAULT_WEEKS = 12


async def activity_report(
    session: AsyncSession, caller: Identity, date_from: date | None, date_to: date | None
) -> ActivityReport:
    date_to = date_to or datetime.now(UTC).date()
    date_from = date_from or date_to - timedelta(weeks=DEFAULT_WEEKS)
    if date_from > date_to:
        raise InvalidDateRange("from must not be after to")
    if (date_to - date_from).days > MAX_RANGE_DAYS:
        raise InvalidDateRange(f"the range may span at most {MAX_RANGE_DAYS} days")
    start = datetime.combine(date_from, time.min, UTC)
    end = datetime.combine(date_to + timedelta(days=1), time.min, UTC)
    rows = await repository.activity(session, caller.company_id, start, end)
    report_rows = []
    for row in rows:
        monday = row.week_start.date()
        year, week, _ = monday.isocalendar()
        report_rows.append(
            ActivityRow(
                week=f"{year}-W{week:02d}",
                week_start=monday,
                stage=row.stage,
                sent=row.sent,
                received=row.received,
            )
        )
    return ActivityReport(date_from=date_from, date_to=date_to, rows=report_rows)
