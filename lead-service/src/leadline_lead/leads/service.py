"""Lead logic: create, change and delete leads, telling the other services through the outbox.

A lead's owner must be a user of the caller's company.  The service learns the company's users from
the gateway's ``user.updated`` / ``user.deleted`` events (services never ask each other's tables,
and an event kept here costs no round trip to the gateway on each write); the caller is always a
user of their company.

The sync service keeps its own copy of every lead's addresses and creation
time from ``lead.created|updated|deleted`` (R5, R6), so each change enqueues
the lead's full state in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.errors import InvalidEmailAddress
from leadline_kit.identity import Identity
from leadline_kit.outbox import enqueue
from leadline_kit.pagination import Page, decode_position, encode_position
from leadline_lead.addresses import InvalidAddress, normalise_address
from leadline_lead.leads import repository
from leadline_lead.leads.schemas import Lead, LeadCreate, LeadUpdate, MailStatus
from leadline_lead.models import outbox
from leadline_lead.problems import AddressTaken, LeadNotFound, UnknownOwner
from leadline_proto.events import LeadCreatedV1, LeadDeletedV1, LeadPayload, LeadUpdatedV1


def normalised_addresses(raw: Sequence[str]) -> list[str]:
    """Normal forms in the given order, duplicates dropped; a bad address is a 422 problem."""
    seen: dict[str, None] = {}
    for address in raw:
        try:
            seen.setdefault(normalise_address(address), None)
        except InvalidAddress as exc:
            raise InvalidEmailAddress(str(exc), address=address[:254]) from exc
    return list(seen)


def _mail_status(row: Row[Any]) -> MailStatus:
    """A complaint is the strongest "stop": the lead did get the mail and reported it as spam."""
    if row.complained_at:
        return MailStatus.COMPLAINED
    if row.bounced_at:
        return MailStatus.BOUNCED
    return MailStatus.UNSUBSCRIBED if row.unsubscribed_at else MailStatus.OK


def _lead(row: Row[Any], addresses: list[str]) -> Lead:
    return Lead(
        id=row.id,
        name=row.name,
        addresses=addresses,
        account_name=row.account_name,
        owner_user_id=row.owner_user_id,
        stage=row.stage,
        unsubscribed=row.unsubscribed_at is not None,
        unsubscribed_at=row.unsubscribed_at,
        bounced_at=row.bounced_at,
        complained_at=row.complained_at,
        mail_status=_mail_status(row),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _payload(lead: Lead) -> LeadPayload:
    return LeadPayload(
        lead_id=lead.id,
        name=lead.name,
        addresses=lead.addresses,
        stage=lead.stage,
        owner_user_id=lead.owner_user_id,
        created_at=lead.created_at,
    )


async def _claim(
    session: AsyncSession, company_id: uuid.UUID, lead_id: uuid.UUID, addresses: list[str]
) -> None:
    taken = await repository.claim_addresses(session, company_id, lead_id, addresses)
    if taken:
        first = sorted(taken)[0]
        raise AddressTaken(f"{first} already belongs to another lead", address=first)


async def _check_owner(session: AsyncSession, caller: Identity, owner: uuid.UUID | None) -> None:
    """A lead's owner is a user of the caller's company (known from the gateway's user events)."""
    if (
        owner is not None
        and owner != caller.user_id
        and not await repository.is_user_of(session, caller.company_id, owner)
    ):
        raise UnknownOwner("owner_user_id names no user of your company", owner_user_id=str(owner))


async def create_lead(session: AsyncSession, caller: Identity, body: LeadCreate) -> Lead:
    await _check_owner(session, caller, body.owner_user_id)
    addresses = normalised_addresses(body.addresses)
    row = await repository.insert_lead(
        session,
        {
            "id": uuid.uuid4(),
            "company_id": caller.company_id,
            "name": body.name,
            "account_name": body.account_name,
            "owner_user_id": body.owner_user_id or caller.user_id,
            "stage": body.stage,
        },
    )
    await _claim(session, caller.company_id, row.id, addresses)
    created = _lead(row, addresses)
    await enqueue(
        session, outbox, LeadCreatedV1(company_id=caller.company_id, payload=_payload(created))
    )
    return created


async def get_lead(session: AsyncSession, caller: Identity, lead_id: uuid.UUID) -> Lead:
    row = await repository.get_lead(session, caller.company_id, lead_id)
    if row is None:
        raise LeadNotFound("no such lead")
    return _lead(
        row, (await repository.addresses_of(session, caller.company_id, [row.id])).get(row.id, [])
    )


async def update_lead(
    session: AsyncSession, caller: Identity, lead_id: uuid.UUID, body: LeadUpdate
) -> Lead:
    row = await repository.get_lead(session, caller.company_id, lead_id, for_update=True)
    if row is None:
        raise LeadNotFound("no such lead")
    values: dict[str, Any] = {}
    for field in ("name", "account_name", "stage"):
        if getattr(body, field) is not None:
            values[field] = getattr(body, field)
    if "owner_user_id" in body.model_fields_set:
        await _check_owner(session, caller, body.owner_user_id)
        values["owner_user_id"] = body.owner_user_id
    if body.addresses is not None:
        addresses = normalised_addresses(body.addresses)
        await repository.release_addresses_except(session, caller.company_id, row.id, addresses)
        await _claim(session, caller.company_id, row.id, addresses)
    row = await repository.update_lead(session, caller.company_id, row.id, values)
    updated = _lead(
        row, (await repository.addresses_of(session, caller.company_id, [row.id])).get(row.id, [])
    )
    await enqueue(
        session, outbox, LeadUpdatedV1(company_id=caller.company_id, payload=_payload(updated))
    )
    return updated


async def delete_lead(session: AsyncSession, caller: Identity, lead_id: uuid.UUID) -> None:
    gone = await get_lead(session, caller, lead_id)
    await repository.delete_lead(session, caller.company_id, gone.id)
    await enqueue(
        session, outbox, LeadDeletedV1(company_id=caller.company_id, payload=_payload(gone))
    )


async def list_leads(
    session: AsyncSession, caller: Identity, *, query: str | None, cursor: str | None, limit: int
) -> Page[Lead]:
    after = decode_position(cursor)
    rows = await repository.list_leads(
        session,
        caller.company_id,
        query=(query or "").strip() or None,
        after=after,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    addresses = await repository.addresses_of(session, caller.company_id, [r.id for r in rows])
    items = [_lead(r, addresses.get(r.id, [])) for r in rows]
    next_cursor = encode_position(rows[-1].created_at, rows[-1].id) if more and rows else None
    return Page[Lead](items=items, next_cursor=next_cursor)
