"""``RPC_LEAD_DIRECTORY``: the sync service asks how many leads a company has before a historical sync.

The sync service matches mail against its own copy of the leads, built from
``lead.*`` events.  A historical sync that ran ahead of those events would
pass a lead's mail for good, so the sync waits until its copy holds as many
leads as this answer counts (see the sync service's README).
"""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError
from sqlalchemy import func, select

from leadline_kit.db import Database
from leadline_lead.leads.responder import QUEUE_GROUP
from leadline_lead.models import lead, lead_address
from leadline_proto.requests import LeadDirectoryReply, LeadDirectoryRequest
from leadline_proto.subjects import RPC_LEAD_DIRECTORY

log = logging.getLogger("leadline.lead.directory")


async def directory_reply(db: Database, request: LeadDirectoryRequest) -> LeadDirectoryReply:
    async with db.session() as session:
        row = (
            await session.execute(
                select(func.count(func.distinct(lead.c.id)), func.max(lead.c.created_at), func.now())
                .select_from(lead.join(lead_address, lead_address.c.lead_id == lead.c.id))
                .where(lead.c.company_id == request.company_id, lead_address.c.company_id == request.company_id)
            )
        ).one()
    return LeadDirectoryReply(leads=row[0], newest_created_at=row[1], as_of=row[2])


async def serve_lead_directory(nc: Client, db: Database) -> Subscription:
    async def on_request(msg: Msg) -> None:
        try:
            request = LeadDirectoryRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            await msg.respond(LeadDirectoryReply(leads=0, detail=str(exc)[:300]).model_dump_json().encode())
            return
        try:
            reply = await directory_reply(db, request)
        except Exception:
            log.exception("lead directory request failed")
            return  # the asker times out and asks again; never a count we did not read
        await msg.respond(reply.model_dump_json().encode())

    subscription = await nc.subscribe(RPC_LEAD_DIRECTORY, queue=QUEUE_GROUP, cb=on_request)
    await nc.flush()  # the server knows the subscription before the service says it is ready
    return subscription
