"""The lead service: leads, blocklist, the Life of the Lead and the activity report (port 8101)."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import FastAPI

from leadline_kit import rpc
from leadline_kit.db import Database
from leadline_kit.service import Runtime, create_service_app
from leadline_lead.blocklist.endpoints import router as blocklist_router
from leadline_lead.config import Settings
from leadline_lead.consumers import lead_consumers
from leadline_lead.leads.directory import directory_reply
from leadline_lead.leads.endpoints import router as leads_router
from leadline_lead.leads.responder import lead_addresses
from leadline_lead.models import outbox
from leadline_lead.reports.endpoints import router as reports_router
from leadline_lead.timeline.endpoints import router as timeline_router
from leadline_lead.timeline.lookup import message_timeline
from leadline_proto.requests import (
    LeadAddressesReply,
    LeadAddressesRequest,
    LeadDirectoryReply,
    LeadDirectoryRequest,
    MessageTimelineReply,
    MessageTimelineRequest,
)
from leadline_proto.subjects import RPC_LEAD_ADDRESSES, RPC_LEAD_DIRECTORY, RPC_MESSAGE_TIMELINE

QUEUE_GROUP = "leadline-lead"


def responders(db: Database) -> list[rpc.Responder[Any]]:
    """What the lead service answers; a failure is not answered (the asker times out and says the
    lead service did not answer), never answered with something we did not read, such as "no such
    lead"."""
    return [
        rpc.Responder(
            RPC_LEAD_ADDRESSES,
            LeadAddressesRequest,
            functools.partial(lead_addresses, db),
            lambda why: LeadAddressesReply(detail=why),
        ),
        rpc.Responder(
            RPC_LEAD_DIRECTORY,
            LeadDirectoryRequest,
            functools.partial(directory_reply, db),
            lambda why: LeadDirectoryReply(leads=0, detail=why[:300]),
        ),
        rpc.Responder(
            RPC_MESSAGE_TIMELINE,
            MessageTimelineRequest,
            functools.partial(message_timeline, db),
            lambda why: MessageTimelineReply(detail=why),
        ),
    ]


async def on_start(runtime: Runtime) -> None:
    for responder in responders(runtime.db):
        subscription = await rpc.subscribe(runtime.nats, responder, QUEUE_GROUP)
        runtime.spawn(rpc.respond(subscription, responder), f"lead-rpc-{responder.subject}")


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(
        name="lead",
        settings=settings or Settings(),
        schema="lead",
        outbox=outbox,
        routers=[leads_router, timeline_router, blocklist_router, reports_router],
        consumers=lead_consumers,
        on_start=on_start,
        title="Leadline lead service",
    )
