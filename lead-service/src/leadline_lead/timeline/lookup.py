"""``RPC_MESSAGE_TIMELINE``: the sync service asks which leads' timelines hold a Message-ID.

It answers "why is this mail not on the timeline?" (``GET /v1/mail-sync/messages``) from what the
timelines really hold, not from what the sync published.  Answered in the lead service's queue
group; a database failure is not answered (the asker says the lead service did not answer).
"""

from __future__ import annotations

from leadline_kit.db import Database
from leadline_lead.timeline import repository
from leadline_lead.timeline.service import message_key
from leadline_proto.requests import (
    MessageTimelineEntry,
    MessageTimelineReply,
    MessageTimelineRequest,
)

MAX_ENTRIES = 100


async def message_timeline(db: Database, request: MessageTimelineRequest) -> MessageTimelineReply:
    key = message_key(request.message_id)
    async with db.session() as session:
        rows = await repository.events_of_message(session, request.company_id, key, MAX_ENTRIES)
    return MessageTimelineReply(
        entries=[
            MessageTimelineEntry(
                lead_id=r[0], kind=r[1], occurred_at=r[2], sources=sorted(r[3] or [])
            )
            for r in rows
        ]
    )
