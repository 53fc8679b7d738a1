"""Lead HTTP endpoints; any role may read and write leads (R20), always within the caller's
company."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from leadline_kit.db import Session
from leadline_kit.identity import Caller
from leadline_kit.pagination import Page
from leadline_kit.text import ONE_LINE
from leadline_lead.leads import service
from leadline_lead.leads.schemas import Lead, LeadCreate, LeadUpdate

router = APIRouter(prefix="/v1/leads", tags=["leads"])


@router.get("")
async def list_leads(
    session: Session,
    caller: Caller,
    q: Annotated[
        str | None,
        Query(max_length=254, pattern=ONE_LINE, description="address prefix, or part of the name"),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Page[Lead]:
    return await service.list_leads(session, caller, query=q, cursor=cursor, limit=limit)


@router.post("", status_code=201)
async def create_lead(session: Session, caller: Caller, body: LeadCreate) -> Lead:
    return await service.create_lead(session, caller, body)


@router.get("/{lead_id}")
async def get_lead(session: Session, caller: Caller, lead_id: uuid.UUID) -> Lead:
    return await service.get_lead(session, caller, lead_id)


@router.patch("/{lead_id}")
async def update_lead(
    session: Session, caller: Caller, lead_id: uuid.UUID, body: LeadUpdate
) -> Lead:
    return await service.update_lead(session, caller, lead_id, body)


@router.delete("/{lead_id}", status_code=204)
async def delete_lead(session: Session, caller: Caller, lead_id: uuid.UUID) -> Response:
    await service.delete_lead(session, caller, lead_id)
    return Response(status_code=204)
