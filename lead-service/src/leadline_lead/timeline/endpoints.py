"""Life of the Lead HTTP endpoint."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from leadline_kit.db import Session
from leadline_kit.identity import Caller
from leadline_lead.timeline import service
from leadline_lead.timeline.repository import TIMELINE_LIMIT
from leadline_lead.timeline.schemas import Timeline

router = APIRouter(prefix="/v1/leads", tags=["timeline"])


@router.get("/{lead_id}/timeline", response_model=Timeline)
async def lead_timeline(
    session: Session,
    caller: Caller,
    lead_id: uuid.UUID,
    limit: Annotated[int, Query(ge=1, le=TIMELINE_LIMIT)] = TIMELINE_LIMIT,
) -> Response:
    return Response(
        await service.timeline(session, caller, lead_id, limit), media_type="application/json"
    )
