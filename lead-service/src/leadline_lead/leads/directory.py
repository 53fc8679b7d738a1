"""``RPC_LEAD_DIRECTORY``: the sync service asks how many leads a company has before a historical sync.

The sync service matches mail against its own copy of the leads, built from
``lead.*`` events.  A historical sync that ran ahead of those events would
pass a lead's mail for good, so the sync waits until its copy holds as many
leads as this answer counts (see the sync service's README).
"""

from __future__ import annotations

from sqlalchemy import func, select

from leadline_kit.db import Database
from leadline_lead.models import lead, lead_address
from leadline_proto.requests import LeadDirectoryReply, LeadDirectoryRequest


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
