"""The lead service: leads, blocklist, the Life of the Lead and the activity report (port 8101)."""

from __future__ import annotations

from fastapi import FastAPI

from leadline_kit.service import create_service_app
from leadline_lead.blocklist.endpoints import router as blocklist_router
from leadline_lead.config import Settings
from leadline_lead.consumers import lead_consumers
from leadline_lead.leads.endpoints import router as leads_router
from leadline_lead.models import outbox
from leadline_lead.reports.endpoints import router as reports_router
from leadline_lead.timeline.endpoints import router as timeline_router


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(
        name="lead",
        settings=settings or Settings(),
        schema="lead",
        outbox=outbox,
        routers=[leads_router, timeline_router, blocklist_router, reports_router],
        consumers=lead_consumers,
        title="Leadline lead service",
    )
