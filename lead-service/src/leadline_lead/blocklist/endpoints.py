"""Blocklist HTTP endpoints: any role reads; administrators and company managers change it (R20)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from leadline_kit.db import Session
from leadline_kit.errors import RoleForbidden
from leadline_kit.identity import Caller, Identity
from leadline_lead.blocklist import service
from leadline_lead.blocklist.schemas import BlocklistEntry, BlocklistEntryCreate, BlocklistPage

router = APIRouter(prefix="/v1/blocklist", tags=["blocklist"])

BLOCKLIST_MANAGERS = ("administrator", "company_manager")


async def blocklist_manager(caller: Caller) -> Identity:
    if caller.role not in BLOCKLIST_MANAGERS:
        raise RoleForbidden("only administrators and company managers may change the blocklist")
    return caller


Manager = Annotated[Identity, Depends(blocklist_manager)]


@router.get("")
async def list_blocklist(
    session: Session,
    caller: Caller,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> BlocklistPage:
    return await service.list_entries(session, caller, cursor=cursor, limit=limit)


@router.post("", status_code=201)
async def add_to_blocklist(
    session: Session, caller: Manager, body: BlocklistEntryCreate
) -> BlocklistEntry:
    return await service.add_entry(session, caller, body)


@router.delete("/{entry_id}", status_code=204)
async def remove_from_blocklist(session: Session, caller: Manager, entry_id: uuid.UUID) -> Response:
    await service.remove_entry(session, caller, entry_id)
    return Response(status_code=204)
