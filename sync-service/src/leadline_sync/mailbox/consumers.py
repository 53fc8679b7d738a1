"""Event handlers: the matching directory (leads, blocklist, company) and mailbox-limit slots.

Lead and company events carry full state, so each handler replaces what it
holds; applying one twice, or an older one after a newer one of the same
lead, leaves the directory as the last applied event says.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.consumer import EventConsumer, Handler
from leadline_kit.service import Runtime
from leadline_mail.addresses import normalize_address
from leadline_proto.events import (
    BlocklistAddedV1,
    BlocklistRemovedV1,
    CompanyUpdatedV1,
    Event,
    LeadCreatedV1,
    LeadDeletedV1,
    LeadUpdatedV1,
    MailboxSlotGrantedV1,
)
from leadline_sync.config import Settings
from leadline_sync.mailbox import service
from leadline_sync.matching import normalize_blocklist_value, normalize_domain
from leadline_sync.models import blocklist_entry, company, lead_address, processed

DIRECTORY_SUBJECTS = [
    "leadline.lead.created.v1", "leadline.lead.updated.v1", "leadline.lead.deleted.v1",
    "leadline.blocklist.added.v1", "leadline.blocklist.removed.v1", "leadline.company.updated.v1",
]
SLOT_SUBJECTS = ["leadline.quota.mailbox_slot_granted.v1"]


async def apply_directory_event(session: AsyncSession, event: Event) -> None:
    if isinstance(event, LeadCreatedV1 | LeadUpdatedV1 | LeadDeletedV1):
        lead = event.payload
        await session.execute(delete(lead_address).where(lead_address.c.company_id == event.company_id,
                                                         lead_address.c.lead_id == lead.lead_id))
        if isinstance(event, LeadDeletedV1):
            return
        addresses = {a for a in (normalize_address(raw) for raw in lead.addresses) if a}
        if addresses:
            await session.execute(insert(lead_address).on_conflict_do_nothing(), [
                {"company_id": event.company_id, "lead_id": lead.lead_id, "address": address,
                 "lead_created_at": lead.created_at} for address in addresses])
    elif isinstance(event, BlocklistAddedV1):
        value = normalize_blocklist_value(event.payload.kind, event.payload.value)
        if value:
            await session.execute(insert(blocklist_entry).values(
                company_id=event.company_id, entry_id=event.payload.entry_id, kind=event.payload.kind,
                value=value).on_conflict_do_nothing())
    elif isinstance(event, BlocklistRemovedV1):
        await session.execute(delete(blocklist_entry).where(blocklist_entry.c.company_id == event.company_id,
                                                            blocklist_entry.c.entry_id == event.payload.entry_id))
    elif isinstance(event, CompanyUpdatedV1):
        domains = sorted({d for d in (normalize_domain(raw) for raw in event.payload.domains) if d})
        statement = insert(company).values(company_id=event.company_id, domains=domains,
                                           block_own_domains=event.payload.block_own_domains)
        await session.execute(statement.on_conflict_do_update(
            index_elements=[company.c.company_id],
            set_={"domains": statement.excluded.domains, "block_own_domains": statement.excluded.block_own_domains}))


def slot_handler(clock: Callable[[], datetime]) -> Handler:
    async def apply_slot_event(session: AsyncSession, event: Event) -> None:
        if isinstance(event, MailboxSlotGrantedV1):
            await service.slot_granted(session, event.company_id, event.payload.mailbox_id, clock())

    return apply_slot_event


def consumers(runtime: Runtime) -> list[EventConsumer]:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    clock: Callable[[], datetime] = runtime.extras["clock"]
    prefix = settings.sync_consumer_prefix
    return [
        EventConsumer(db=runtime.db, js=runtime.jetstream, processed=processed, durable=f"{prefix}-directory",
                      subjects=DIRECTORY_SUBJECTS, handler=apply_directory_event),
        EventConsumer(db=runtime.db, js=runtime.jetstream, processed=processed, durable=f"{prefix}-slots",
                      subjects=SLOT_SUBJECTS, handler=slot_handler(clock)),
    ]
