"""``RPC_LEAD_DIRECTORY``: the sync service asks how many leads a company has before a historical
sync.

The sync service matches mail against its own copy of the leads, built from
``lead.*`` events.  A historical sync that ran ahead of those events would
pass a lead's mail for good, so the sync waits until its copy holds as many
leads as this answer counts (see the sync service's README).
"""

from __future__ import annotations

from leadline_kit.db import Database
from leadline_lead.leads import repository
from leadline_proto.requests import LeadDirectoryReply, LeadDirectoryRequest


async def directory_reply(db: Database, request: LeadDirectoryRequest) -> LeadDirectoryReply:
    async with db.session() as session:
        row = await repository.directory_counts(session, request.company_id)
    return LeadDirectoryReply(leads=row[0], newest_created_at=row[1], as_of=row[2])
