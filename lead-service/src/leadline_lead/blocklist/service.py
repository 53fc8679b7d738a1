"""Blocklist logic (R6): entries per company, the company's own domains, and purging what they
block.

Blocking is about who counts as a lead's correspondent: a blocked address or
domain is never matched to a lead, so its mail is never kept.  Adding an
entry (or turning on / extending the own-domain block) therefore removes the
timeline events that only a now-blocked lead address brought; an event whose
message also involves another, unblocked address of the same lead stays.
A domain entry blocks that domain and its subdomains, as the sync service's matching does.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.errors import InvalidEmailAddress
from leadline_kit.identity import Identity
from leadline_kit.outbox import enqueue
from leadline_kit.pagination import decode_position, encode_position
from leadline_lead.addresses import InvalidAddress, normalise_address, normalise_domain
from leadline_lead.blocklist import repository
from leadline_lead.blocklist.schemas import BlocklistEntry, BlocklistEntryCreate, BlocklistPage
from leadline_lead.models import outbox
from leadline_lead.problems import AlreadyBlocklisted, BlocklistEntryNotFound, InvalidDomain
from leadline_lead.timeline.repository import purge_blocked
from leadline_proto.events import (
    BlocklistAddedV1,
    BlocklistEntryPayload,
    BlocklistRemovedV1,
    CompanyUpdatedV1,
)


def _entry(row: Row[object]) -> BlocklistEntry:
    return BlocklistEntry.model_validate(row, from_attributes=True)


def _payload(entry: BlocklistEntry) -> BlocklistEntryPayload:
    return BlocklistEntryPayload(entry_id=entry.id, kind=entry.kind, value=entry.value)


async def add_entry(
    session: AsyncSession, caller: Identity, body: BlocklistEntryCreate
) -> BlocklistEntry:
    kind = body.kind or ("address" if "@" in body.value.lstrip("@") else "domain")
    try:
        value = normalise_address(body.value) if kind == "address" else normalise_domain(body.value)
    except InvalidAddress as exc:
        raise (InvalidEmailAddress if kind == "address" else InvalidDomain)(str(exc)) from exc
    row = await repository.insert_entry(
        session,
        {
            "id": uuid.uuid4(),
            "company_id": caller.company_id,
            "kind": kind,
            "value": value,
            "created_by": caller.user_id,
        },
    )
    if row is None:
        raise AlreadyBlocklisted(f"{value} is already blocklisted", value=value)
    entry = _entry(row)
    if kind == "address":
        await purge_blocked(session, caller.company_id, addresses=[value])
    else:
        await purge_blocked(session, caller.company_id, domains=[value])
    await enqueue(
        session, outbox, BlocklistAddedV1(company_id=caller.company_id, payload=_payload(entry))
    )
    return entry


async def remove_entry(session: AsyncSession, caller: Identity, entry_id: uuid.UUID) -> None:
    """Unblocking lets future mail through; what was purged stays gone."""
    row = await repository.delete_entry(session, caller.company_id, entry_id)
    if row is None:
        raise BlocklistEntryNotFound("no such blocklist entry")
    await enqueue(
        session,
        outbox,
        BlocklistRemovedV1(company_id=caller.company_id, payload=_payload(_entry(row))),
    )


async def list_entries(
    session: AsyncSession, caller: Identity, *, cursor: str | None, limit: int
) -> BlocklistPage:
    after = decode_position(cursor)
    rows = await repository.list_entries(session, caller.company_id, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    settings = await repository.get_settings(session, caller.company_id)
    return BlocklistPage(
        items=[_entry(r) for r in rows],
        next_cursor=encode_position(rows[-1].created_at, rows[-1].id) if more and rows else None,
        own_domains=list(settings.domains) if settings else [],
        own_domains_blocked=settings.block_own_domains if settings else True,
    )


async def apply_company_settings(session: AsyncSession, event: CompanyUpdatedV1) -> None:
    """Keep the company's own domains and switch; purge the domains that become blocked."""
    company = event.company_id
    domains = []
    for raw in event.payload.domains:
        try:
            domains.append(normalise_domain(raw))
        except InvalidAddress:
            continue  # the gateway validates domains; one we cannot read blocks nothing
    domains = list(dict.fromkeys(domains))
    before = await repository.get_settings(session, company, for_update=True)
    if not await repository.save_settings(
        session, company, domains, event.payload.block_own_domains, event.occurred_at
    ):
        return  # a newer company.updated was applied already
    if not event.payload.block_own_domains:
        return
    blocked_before = (
        set(before.domains) if before is not None and before.block_own_domains else set()
    )
    newly_blocked = [d for d in domains if d not in blocked_before]
    await purge_blocked(session, company, domains=newly_blocked)
