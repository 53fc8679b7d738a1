"""Every query on timeline events and their sources; bulk statements for the consumer's hot path."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Row,
    Text,
    Uuid,
    bindparam,
    delete,
    exists,
    func,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import NullType

from leadline_lead.models import blocklist_entry, company_settings, timeline_event
from leadline_lead.models import timeline_event_source as source

TIMELINE_LIMIT = 300

_LEAD_ADDRESSES = text(
    "SELECT la.company_id, la.address, la.lead_id FROM lead_address la "
    "JOIN unnest(CAST(:companies AS uuid[]), CAST(:addresses AS text[])) AS wanted(company_id, "
    "address) ON la.company_id = wanted.company_id AND la.address = wanted.address"
).bindparams(bindparam("companies", type_=ARRAY(Uuid)), bindparam("addresses", type_=ARRAY(Text)))


async def lead_addresses(
    session: AsyncSession, pairs: Collection[tuple[uuid.UUID, str]]
) -> dict[tuple[uuid.UUID, str], uuid.UUID]:
    """Which lead holds each (company, address), in one query."""
    if not pairs:
        return {}
    companies, addresses = zip(*pairs, strict=True)
    rows = await session.execute(
        _LEAD_ADDRESSES, {"companies": list(companies), "addresses": list(addresses)}
    )
    return {(row.company_id, row.address): row.lead_id for row in rows}


async def blocked_values(
    session: AsyncSession,
    companies: Collection[uuid.UUID],
    addresses: Collection[str],
    domains: Collection[str],
) -> set[tuple[uuid.UUID, str]]:
    """The (company, address or domain) pairs among those given that the company blocks (R6).

    Pass every domain to check, parents included (:func:`domain_and_parents`); the company's own
    domains count unless it turned that off.
    """
    if not companies:
        return set()
    entries = await session.execute(
        select(blocklist_entry.c.company_id, blocklist_entry.c.value).where(
            blocklist_entry.c.company_id.in_(list(companies)),
            blocklist_entry.c.value.in_([*addresses, *domains]),
        )
    )
    blocked = {(row.company_id, row.value) for row in entries}
    own = await session.execute(
        select(company_settings.c.company_id, company_settings.c.domains).where(
            company_settings.c.company_id.in_(list(companies)), company_settings.c.block_own_domains
        )
    )
    wanted = set(domains)
    for row in own:
        blocked.update((row.company_id, domain) for domain in row.domains if domain in wanted)
    return blocked


# Bulk statements take one array per column and unnest them: one statement and a handful of
# parameters whatever the batch size, instead of thousands of bound values (executemany).
# Array columns travel as strings joined with the unit separator, which no stored address contains.
_ARRAY_SEPARATOR = "\x1f"
_SCALAR_COLUMNS = {
    "company_id": "uuid",
    "lead_id": "uuid",
    "message_key": "text",
    "message_id": "text",
    "kind": "text",
    "category": "text",
    "occurred_at": "timestamptz",
    "direction": "text",
    "from_address": "text",
    "from_name": "text",
    "subject": "text",
    "snippet": "text",
    "mailbox_id": "uuid",
    "user_id": "uuid",
    "folder": "text",
}
_ARRAY_COLUMNS = ("to_addresses", "cc_addresses", "matched_addresses")
_ALL_COLUMNS = (*_SCALAR_COLUMNS, *_ARRAY_COLUMNS)

# only the constant column names above are interpolated
_UPSERT = text(f"""
INSERT INTO timeline_event ({", ".join(_ALL_COLUMNS)})
SELECT {
    ", ".join([*_SCALAR_COLUMNS, *(f"string_to_array(r.{c}, :separator)" for c in _ARRAY_COLUMNS)])
}
FROM unnest({
    ", ".join(
        f"CAST(:{c} AS {t}[])"
        for c, t in [*_SCALAR_COLUMNS.items(), *((c, "text") for c in _ARRAY_COLUMNS)]
    )
})
     AS r({", ".join(_ALL_COLUMNS)})
ON CONFLICT ON CONSTRAINT uq_timeline_event_message DO UPDATE SET
    kind = CASE WHEN excluded.kind = 'smart_mail_sent' THEN excluded.kind ELSE timeline_event.kind END,
    category = CASE WHEN excluded.kind = 'smart_mail_sent' THEN excluded.category
                    ELSE timeline_event.category END,
    mailbox_id = coalesce(timeline_event.mailbox_id, excluded.mailbox_id),
    user_id = coalesce(timeline_event.user_id, excluded.user_id),
    folder = coalesce(timeline_event.folder, excluded.folder),
    snippet = CASE WHEN timeline_event.snippet = '' THEN excluded.snippet ELSE timeline_event.snippet END,
    matched_addresses = ARRAY(SELECT DISTINCT unnest(timeline_event.matched_addresses
                                                     || excluded.matched_addresses))
RETURNING id, company_id, lead_id, message_key
""")  # noqa: S608, E501

_INSERT_SOURCES = text("""
INSERT INTO timeline_event_source (timeline_event_id, source, company_id, mailbox_id)
SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:sources AS text[]), CAST(:companies AS uuid[]),
                     CAST(:mailboxes AS uuid[]))
ON CONFLICT DO NOTHING
""")


async def upsert_mail_events(
    session: AsyncSession, rows: Sequence[dict[str, Any]]
) -> list[Row[Any]]:
    """Insert timeline events, merging into the existing event of the same message (R12, R26).

    A Smart Mail event wins the kind and category (the same message synced
    from Sent stays "Smart Mail sent"); mailbox, user and folder keep the first
    known; the lead's matched addresses are the union.  ``rows`` must not hold
    two rows for the same (company, lead, message key).
    """
    params: dict[str, Any] = {column: [row[column] for row in rows] for column in _SCALAR_COLUMNS}
    params.update(
        {column: [_ARRAY_SEPARATOR.join(row[column]) for row in rows] for column in _ARRAY_COLUMNS}
    )
    params["separator"] = _ARRAY_SEPARATOR
    return list((await session.execute(_UPSERT, params)).all())


async def insert_sources(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(
            _INSERT_SOURCES,
            {
                "ids": [r["timeline_event_id"] for r in rows],
                "sources": [r["source"] for r in rows],
                "companies": [r["company_id"] for r in rows],
                "mailboxes": [r["mailbox_id"] for r in rows],
            },
        )


async def mark_bounced_from_earlier_bounces(
    session: AsyncSession, event_ids: Sequence[int]
) -> None:
    """A bounce may be synced before the message it is about: mark such messages now."""
    bounce = timeline_event.alias("bounce")
    await session.execute(
        update(timeline_event)
        .where(
            timeline_event.c.id.in_(list(event_ids)),
            timeline_event.c.bounced_at.is_(None),
            bounce.c.company_id == timeline_event.c.company_id,
            bounce.c.lead_id == timeline_event.c.lead_id,
            bounce.c.message_key == "bounce " + timeline_event.c.message_key,
        )
        .values(bounced_at=bounce.c.occurred_at)
    )


async def upsert_bounce(session: AsyncSession, row: dict[str, Any]) -> int:
    """The bounce's timeline event id, new or existing (the same bounce may come through two
    mailboxes)."""
    base = insert(timeline_event).values(**row)
    stmt = base.on_conflict_do_update(
        constraint="uq_timeline_event_message",
        set_={"mailbox_id": func.coalesce(timeline_event.c.mailbox_id, base.excluded.mailbox_id)},
    ).returning(timeline_event.c.id)
    event_id: int = (await session.execute(stmt)).scalar_one()
    return event_id


async def outbound_recipient(
    session: AsyncSession, company_id: uuid.UUID, message_key: str
) -> tuple[uuid.UUID, str] | None:
    """The lead (and its address) that our message went to, when exactly one lead's timeline holds
    it."""
    rows = (
        await session.execute(
            select(timeline_event.c.lead_id, timeline_event.c.matched_addresses)
            .where(
                timeline_event.c.company_id == company_id,
                timeline_event.c.message_key == message_key,
                timeline_event.c.direction == "outbound",
            )
            .limit(2)
        )
    ).all()
    if len(rows) != 1 or not rows[0].matched_addresses:
        return None
    return rows[0].lead_id, rows[0].matched_addresses[0]


async def original_subject(
    session: AsyncSession, company_id: uuid.UUID, lead_id: uuid.UUID, message_key: str
) -> str | None:
    return (
        await session.execute(
            select(timeline_event.c.subject).where(
                timeline_event.c.company_id == company_id,
                timeline_event.c.lead_id == lead_id,
                timeline_event.c.message_key == message_key,
            )
        )
    ).scalar()


async def mark_bounced(
    session: AsyncSession, company_id: uuid.UUID, lead_id: uuid.UUID, message_key: str, at: datetime
) -> None:
    await session.execute(
        update(timeline_event)
        .where(
            timeline_event.c.company_id == company_id,
            timeline_event.c.lead_id == lead_id,
            timeline_event.c.message_key == message_key,
            timeline_event.c.bounced_at.is_(None),
        )
        .values(bounced_at=at)
    )


async def remove_mailbox_history(
    session: AsyncSession, company_id: uuid.UUID, mailbox_id: uuid.UUID
) -> int:
    """R11: delete the events only this mailbox brought, drop it as a source of the others; returns
    how many.

    Set-based statements only: a mailbox may have brought hundreds of thousands of events.
    """
    from_mailbox = select(source.c.timeline_event_id).where(
        source.c.company_id == company_id, source.c.mailbox_id == mailbox_id
    )
    other_source = exists().where(
        source.c.timeline_event_id == timeline_event.c.id, source.c.source != str(mailbox_id)
    )
    deleted = await session.execute(
        delete(timeline_event)
        .where(
            timeline_event.c.company_id == company_id,
            timeline_event.c.id.in_(from_mailbox),
            ~other_source,
        )
        .returning(timeline_event.c.id)
    )
    removed = len(deleted.all())  # their sources go with them (ON DELETE CASCADE)
    # events another mailbox also brought now show that mailbox as where they came from; a Smart
    # Mail kept only by its "smart_mail" source still names the mailbox it was sent from
    other_mailbox = (
        select(source.c.mailbox_id)
        .where(
            source.c.timeline_event_id == timeline_event.c.id,
            source.c.mailbox_id.is_not(None),
            source.c.mailbox_id != mailbox_id,
        )
        .order_by(source.c.mailbox_id)
        .limit(1)
        .scalar_subquery()
    )
    await session.execute(
        update(timeline_event)
        .where(
            timeline_event.c.company_id == company_id,
            timeline_event.c.mailbox_id == mailbox_id,
            timeline_event.c.id.in_(from_mailbox),
        )
        .values(mailbox_id=func.coalesce(other_mailbox, timeline_event.c.mailbox_id))
    )
    await session.execute(
        delete(source).where(source.c.company_id == company_id, source.c.mailbox_id == mailbox_id)
    )
    return removed


# a domain blocks its subdomains too (as the sync service matches)
_PURGE = text("""
WITH blocked AS (
    SELECT unnest(CAST(:domains AS text[])) AS domain
), candidate AS (
    SELECT e.id, e.matched_addresses AS matched,
           ARRAY(SELECT a FROM unnest(e.matched_addresses) AS a
                 WHERE a <> ALL(:addresses)
                   AND NOT EXISTS (SELECT 1 FROM blocked b
                                   WHERE split_part(a, '@', 2) = b.domain
                                      OR right(split_part(a, '@', 2), length(b.domain) + 1) = '.' || b.domain)
           ) AS still_matched
    FROM timeline_event e
    WHERE e.company_id = :company_id
      AND e.lead_id IN (SELECT la.lead_id FROM lead_address la
                        WHERE la.company_id = :company_id
                          AND (la.address = ANY(:addresses)
                               OR EXISTS (SELECT 1 FROM blocked b
                                          WHERE la.domain = b.domain
                                             OR right(la.domain, length(b.domain) + 1) = '.' || b.domain)))
), hit AS (
    SELECT id, still_matched FROM candidate WHERE cardinality(still_matched) < cardinality(matched)
), kept AS (
    UPDATE timeline_event e SET matched_addresses = hit.still_matched
    FROM hit WHERE e.id = hit.id AND cardinality(hit.still_matched) > 0
    RETURNING e.id
)
DELETE FROM timeline_event e USING hit
WHERE e.id = hit.id AND cardinality(hit.still_matched) = 0
RETURNING e.id
""").bindparams(  # noqa: E501
    bindparam("company_id", type_=Uuid),
    bindparam("addresses", type_=ARRAY(Text)),
    bindparam("domains", type_=ARRAY(Text)),
)


async def purge_blocked(
    session: AsyncSession,
    company_id: uuid.UUID,
    *,
    addresses: Collection[str] = (),
    domains: Collection[str] = (),
) -> int:
    """Remove blocked addresses' and domains' mail from timelines (R6); returns how many events
    went.

    An event stays when the lead's other, unblocked address is also on the message.
    """
    if not addresses and not domains:
        return 0
    result = await session.execute(
        _PURGE, {"company_id": company_id, "addresses": list(addresses), "domains": list(domains)}
    )
    return len(result.all())


_TIMELINE_COLUMNS = [
    c
    for c in timeline_event.c
    if c.name not in ("company_id", "lead_id", "matched_addresses", "message_key")
]


async def recent_events(
    session: AsyncSession, company_id: uuid.UUID, lead_id: uuid.UUID, limit: int
) -> Sequence[Any]:
    """The newest events with their sources, in one round trip (index
    ``ix_timeline_event_lead_recent``)."""
    sources = (
        select(func.array_agg(aggregate_order_by(source.c.source, source.c.source)))
        .where(source.c.timeline_event_id == timeline_event.c.id)
        .scalar_subquery()
    )
    # asyncpg already returns lists: NullType spares SQLAlchemy's per-item ARRAY processing
    columns = [
        type_coerce(c, NullType()).label(c.name) if isinstance(c.type, ARRAY) else c
        for c in _TIMELINE_COLUMNS
    ]
    return (
        await session.execute(
            select(*columns, type_coerce(sources, NullType()).label("sources"))
            .where(timeline_event.c.lead_id == lead_id, timeline_event.c.company_id == company_id)
            .order_by(timeline_event.c.occurred_at.desc(), timeline_event.c.id.desc())
            .limit(limit)
        )
    ).all()


async def events_of_message(
    session: AsyncSession, company_id: uuid.UUID, key: str, limit: int
) -> list[Any]:
    """The company's timeline events of a Message-ID key, oldest first: (lead_id, kind, occurred_at,
    sources)."""
    sources = (
        select(func.array_agg(source.c.source))
        .where(source.c.timeline_event_id == timeline_event.c.id, source.c.company_id == company_id)
        .scalar_subquery()
    )
    return list(
        (
            await session.execute(
                select(
                    timeline_event.c.lead_id,
                    timeline_event.c.kind,
                    timeline_event.c.occurred_at,
                    sources,
                )
                .where(
                    timeline_event.c.company_id == company_id, timeline_event.c.message_key == key
                )
                .order_by(timeline_event.c.id)
                .limit(limit)
            )
        ).all()
    )
