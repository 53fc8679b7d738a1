"""The lead service: leads, blocklist, the Life of the Lead and the activity report (port 8101)."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI

from leadline_kit.service import Runtime, create_service_app
from leadline_lead.blocklist.endpoints import router as blocklist_router
from leadline_lead.config import Settings
from leadline_lead.consumers import lead_consumers
from leadline_lead.leads.directory import serve_lead_directory
from leadline_lead.leads.endpoints import router as leads_router
from leadline_lead.leads.responder import serve_lead_addresses
from leadline_lead.models import outbox
from leadline_lead.reports.endpoints import router as reports_router
from leadline_lead.timeline.endpoints import router as timeline_router
from leadline_lead.timeline.lookup import serve_message_timeline


async def on_start(runtime: Runtime) -> None:
    runtime.extras["lead_addresses"] = await serve_lead_addresses(runtime.nats, runtime.db)
    runtime.extras["lead_directory"] = await serve_lead_directory(runtime.nats, runtime.db)
    runtime.extras["message_timeline"] = await serve_message_timeline(runtime.nats, runtime.db)


async def on_stop(runtime: Runtime) -> None:
    for name in ("lead_addresses", "lead_directory", "message_timeline"):
        subscription = runtime.extras.get(name)
        if subscription is not None:
            with contextlib.suppress(Exception):  # the connection may already be closing
                await subscription.unsubscribe()


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(
        name="lead",
        settings=settings or Settings(),
        schema="lead",
        outbox=outbox,
        routers=[leads_router, timeline_router, blocklist_router, reports_router],
        consumers=lead_consumers,
        on_start=on_start,
        on_stop=on_stop,
        title="Leadline lead service",
    )
