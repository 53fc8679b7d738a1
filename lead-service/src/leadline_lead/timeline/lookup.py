"""``RPC_MESSAGE_TIMELINE``: the sync service asks which leads' timelines hold a Message-ID.

It answers "why is this mail not on the timeline?" (``GET /v1/mail-sync/messages``) from what the
timelines really hold, not from what the sync published.  Answered in the lead service's queue
group; a database failure is not answered (the asker says the lead service did not answer).
"""

from __future__ import annotations

from sqlalchemy import func, select

from leadline_kit.db import Database
from leadline_lead.models import timeline_event
from leadline_lead.models import timeline_event_source as source
from leadline_lead.timeline.service import message_key
from leadline_proto.requests import MessageTimelineEntry, MessageTimelineReply, MessageTimelineRequest

MAX_ENTRIES = 100


async def message_timeline(db: Database, request: MessageTimelineRequest) -> MessageTimelineReply:
    key = message_key(request.message_id)
    sources = (
        select(func.array_agg(source.c.source))
        .where(source.c.timeline_event_id == timeline_event.c.id, source.c.company_id == request.company_id)
        .scalar_subquery()
    )
    async with db.session() as session:
        rows = (
            await session.execute(
                select(timeline_event.c.lead_id, timeline_event.c.kind, timeline_event.c.occurred_at, sources)
                .where(timeline_event.c.company_id == request.company_id, timeline_event.c.message_key == key)
                .order_by(timeline_event.c.id)
                .limit(MAX_ENTRIES)
            )
        ).all()
    return MessageTimelineReply(
        entries=[
            MessageTimelineEntry(lead_id=r[0], kind=r[1], occurred_at=r[2], sources=sorted(r[3] or [])) for r in rows
        ]
    )
