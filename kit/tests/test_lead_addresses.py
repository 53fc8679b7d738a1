"""The lead-address replica holds what the last applied ``lead.*`` event says, and names new addresses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from sqlalchemy import Column, Integer, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.consumer import Handlers
from leadline_kit.db import Database, service_metadata
from leadline_kit.lead_addresses import LeadAddressReplica, lead_address_table
from leadline_proto.events import LeadCreatedV1, LeadDeletedV1, LeadPayload, LeadUpdatedV1, utcnow

metadata = service_metadata("kitleads")
lead_address = lead_address_table(metadata, Column("position", Integer, nullable=False))


def rows(lead: LeadPayload) -> list[Mapping[str, Any]]:
    return [{"address": a.lower(), "position": n} for n, a in enumerate(lead.addresses)]


@pytest.fixture
async def db(fresh_database: str) -> AsyncIterator[Database]:
    database = Database(fresh_database, "kitleads")
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql("CREATE SCHEMA kitleads")
        await conn.run_sync(metadata.create_all)
    yield database
    await database.dispose()


async def held(db: Database, lead_id: uuid.UUID) -> list[tuple[str, int]]:
    async with db.session() as session:
        found = await session.execute(
            select(lead_address.c.address, lead_address.c.position)
            .where(lead_address.c.lead_id == lead_id)
            .order_by(lead_address.c.position)
        )
        return [(r.address, r.position) for r in found]


async def test_the_replica_holds_what_the_last_event_says_and_names_the_new_addresses(
    db: Database,
) -> None:
    told: list[tuple[uuid.UUID, list[str]]] = []

    async def added(
        session: AsyncSession, company_id: uuid.UUID, lead: LeadPayload, addresses: list[str]
    ) -> None:
        told.append((lead.lead_id, addresses))

    handlers = LeadAddressReplica(lead_address, rows, added).handlers(Handlers())
    assert len(handlers.subjects) == 3  # one handler for each lead.* type, its subject derived
    company, lead_id, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    def lead(*addresses: str, of: uuid.UUID = lead_id) -> LeadPayload:
        return LeadPayload(lead_id=of, addresses=list(addresses), created_at=utcnow())

    async def apply(*events: LeadCreatedV1 | LeadUpdatedV1 | LeadDeletedV1) -> None:
        async with db.session() as session:
            for event in events:
                await handlers(session, event)

    created = LeadCreatedV1(company_id=company, payload=lead("Ann@example.org", "ann@work.example"))
    await apply(
        created, LeadCreatedV1(company_id=company, payload=lead("bob@example.org", of=other))
    )
    assert await held(db, lead_id) == [("ann@example.org", 0), ("ann@work.example", 1)]
    assert told == [
        (lead_id, ["ann@example.org", "ann@work.example"]),
        (other, ["bob@example.org"]),
    ]

    # the same event again changes nothing and tells of nothing new; an update replaces the lead's rows
    await apply(
        created,
        LeadUpdatedV1(company_id=company, payload=lead("ann@work.example", "ann@new.example")),
    )
    assert await held(db, lead_id) == [("ann@work.example", 0), ("ann@new.example", 1)]
    assert told[2:] == [(lead_id, ["ann@new.example"])]

    await apply(LeadDeletedV1(company_id=company, payload=lead("ann@work.example")))
    assert await held(db, lead_id) == []
    assert await held(db, other) == [("bob@example.org", 0)]
    assert len(told) == 3
