"""Activity report API models."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel

from leadline_lead.leads.schemas import Stage


class ActivityRow(BaseModel):
    week: str  # ISO week, e.g. "2026-W07"
    week_start: date  # its Monday
    stage: Stage
    sent: int
    received: int


class ActivityReport(BaseModel):
    date_from: date
    date_to: date
    rows: list[ActivityRow]
