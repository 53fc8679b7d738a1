"""Event handlers: the matching directory (leads, blocklist, company) and mailbox-limit slots.

The lead addresses are the kit's replica (:mod:`leadline_kit.lead_addresses`).
Lead and company events carry full state, so each handler replaces what it
holds; applying one twice, or an older one after a newer one of the same
lead, leaves the directory as the last applied event says.

A lead's addresses that are new to the directory may be on mail a mailbox
already examined without them (the event came late: a lagging consumer, a
lead created just before the mailbox was connected).  In the same
transaction every connected mailbox of the company gets a ``lead_recheck``
row, and its sync searches its folders for that mail again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.consumer import EventConsumer, Handlers
from leadline_kit.lead_addresses import LeadAddressReplica
from leadline_kit.service import Runtime
from leadline_mail.addresses import normalize_addresses
from leadline_proto.events import (
    BlocklistAddedV1,
    BlocklistRemovedV1,
    CompanyUpdatedV1,
    LeadPayload,
    MailboxSlotGrantedV1,
)
from leadline_sync.config import Settings
from leadline_sync.context import SyncContext
from leadline_sync.directory import repository as directory
from leadline_sync.mailbox import service
from leadline_sync.matching import normalize_blocklist_value, normalize_domain
from leadline_sync.models import lead_address, processed


async def add_blocklist_entry(session: AsyncSession, event: BlocklistAddedV1) -> None:
    value = normalize_blocklist_value(event.payload.kind, event.payload.value)
    if value:
        await directory.add_blocklist_entry(
            session, event.company_id, event.payload.entry_id, event.payload.kind, value
        )


async def remove_blocklist_entry(session: AsyncSession, event: BlocklistRemovedV1) -> None:
    await directory.remove_blocklist_entry(session, event.company_id, event.payload.entry_id)


async def save_company(session: AsyncSession, event: CompanyUpdatedV1) -> None:
    domains = sorted({d for d in (normalize_domain(raw) for raw in event.payload.domains) if d})
    await directory.save_company(
        session, event.company_id, domains, event.payload.block_own_domains
    )


def lead_rows(lead: LeadPayload) -> list[dict[str, Any]]:
    """What the directory holds of a lead: each address, and when the lead was created (R5)."""
    return [
        {"address": a, "lead_created_at": lead.created_at}
        for a in normalize_addresses(lead.addresses)
    ]


async def recheck_lead(
    session: AsyncSession, company_id: uuid.UUID, lead: LeadPayload, addresses: list[str]
) -> None:
    """The replica's ``added``: every connected mailbox of the company looks for the lead's mail
    again."""
    await directory.recheck_lead(session, company_id, lead.lead_id, addresses, lead.created_at)


LEADS = LeadAddressReplica(lead_address, lead_rows, added=recheck_lead)
DIRECTORY = (
    LEADS.handlers(Handlers())
    .on(BlocklistAddedV1, add_blocklist_entry)
    .on(BlocklistRemovedV1, remove_blocklist_entry)
    .on(CompanyUpdatedV1, save_company)
)


def slot_handlers(clock: Callable[[], datetime]) -> Handlers:
    async def grant_slot(session: AsyncSession, event: MailboxSlotGrantedV1) -> None:
        await service.slot_granted(session, event.company_id, event.payload.mailbox_id, clock())

    return Handlers().on(MailboxSlotGrantedV1, grant_slot)


def consumers(runtime: Runtime) -> list[EventConsumer]:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    clock = runtime.context_of(SyncContext).clock
    prefix = settings.consumer_prefix
    return [
        EventConsumer(
            db=runtime.db,
            js=runtime.jetstream,
            processed=processed,
            durable=f"{prefix}-directory",
            handlers=DIRECTORY,
            deliver_since=settings.consumer_deliver_since,
        ),
        EventConsumer(
            db=runtime.db,
            js=runtime.jetstream,
            processed=processed,
            durable=f"{prefix}-slots",
            handlers=slot_handlers(clock),
            deliver_since=settings.consumer_deliver_since,
        ),
    ]
