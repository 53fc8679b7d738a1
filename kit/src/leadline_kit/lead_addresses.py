"""A service's replica of lead addresses, kept from the lead service's ``lead.*`` events.

The lead service owns leads. The sync service matches mail on their addresses (R5) and the send
service addresses lead mail with them, so each keeps a replica in its own schema (services share no
tables): a table made by :func:`lead_address_table`, ``company_id``, ``lead_id`` and ``address``
(the primary key; an address as ``leadline_mail.addresses`` normalises it) beside the columns the
service reads (sync: when the lead was created; send: the address's position and the lead's name).

``lead.created`` and ``lead.updated`` carry a lead's whole state, so applying one replaces what the
replica held of the lead, and ``lead.deleted`` leaves nothing of it: applying an event twice, or an
older one after a newer, leaves what the last applied says. The handlers, one per event type, run in
the consumer's transaction (``processed_event``, kit.consumer).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Index, MetaData, PrimaryKeyConstraint, Table, Text, Uuid, delete
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.consumer import Handlers
from leadline_proto.events import LeadCreatedV1, LeadDeletedV1, LeadPayload, LeadUpdatedV1

# a lead's rows: each an "address" and the service's own columns
Rows = Callable[[LeadPayload], Sequence[Mapping[str, Any]]]
# in the same transaction, a lead's addresses the replica did not hold before (company, lead,
# addresses)
Added = Callable[[AsyncSession, uuid.UUID, LeadPayload, list[str]], Awaitable[None]]


def lead_address_table(metadata: MetaData, *columns: Column[Any] | Index) -> Table:
    """The replica's table, ``lead_address`` in the service's schema, with the service's
    ``columns``."""
    return Table(
        "lead_address",
        metadata,
        Column("company_id", Uuid, nullable=False),
        Column("lead_id", Uuid, nullable=False),
        Column("address", Text, nullable=False),
        *columns,
        PrimaryKeyConstraint("company_id", "lead_id", "address"),
    )


class LeadAddressReplica:
    """Keeps ``table`` (a :func:`lead_address_table`) from the events; ``rows`` says what it holds
    of a lead.

    ``added``: told, in the same transaction, of the addresses of a lead the replica did not hold
    before (the sync looks for their mail again).
    """

    def __init__(self, table: Table, rows: Rows, added: Added | None = None) -> None:
        self.table = table
        self.rows = rows
        self.added = added

    def handlers(self, handlers: Handlers) -> Handlers:
        """``handlers`` with one handler for each of the three ``lead.*`` event types."""
        return (
            handlers.on(LeadCreatedV1, self.apply)
            .on(LeadUpdatedV1, self.apply)
            .on(LeadDeletedV1, self.forget)
        )

    async def apply(self, session: AsyncSession, event: LeadCreatedV1 | LeadUpdatedV1) -> None:
        lead = event.payload
        held = await self._remove(session, event.company_id, lead.lead_id)
        rows = self.rows(lead)
        if rows:
            await session.execute(
                insert(self.table).on_conflict_do_nothing(),
                [{"company_id": event.company_id, "lead_id": lead.lead_id, **row} for row in rows],
            )
        new = sorted({row["address"] for row in rows} - held)
        if new and self.added is not None:
            await self.added(session, event.company_id, lead, new)

    async def forget(self, session: AsyncSession, event: LeadDeletedV1) -> None:
        await self._remove(session, event.company_id, event.payload.lead_id)

    async def _remove(
        self, session: AsyncSession, company_id: uuid.UUID, lead_id: uuid.UUID
    ) -> set[str]:
        """Delete the lead's rows; the addresses they held."""
        t = self.table
        removed = await session.execute(
            delete(t)
            .where(t.c.company_id == company_id, t.c.lead_id == lead_id)
            .returning(t.c.address)
        )
        return set(removed.scalars())
