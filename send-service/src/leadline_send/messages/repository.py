"""Queries on outgoing messages, the lead copy and unsubscribes; every one scoped by company (the
API's, and those of the events the service applies, ``consumers.py``).

The two statements of every single ``POST /v1/messages`` (the lead lookup and the insert) are plain
SQL on asyncpg (``Database.plain``); the rest go through SQLAlchemy Core.
"""

from __future__ import annotations

import functools
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import ARRAY, DateTime, Row, Text, Uuid, and_, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert

from leadline_send.database import Executor
from leadline_send.delivery.repository import QUEUE_CHANNEL
from leadline_send.models import lead_address, outgoing_message, unsubscribe
from leadline_send.states import MessageState, move

# what the API shows of a message: every column but the stored draft and MIME bytes (tens of KB
# each)
SHOWN = [c for c in outgoing_message.c if c.name not in ("draft", "raw")]


# Built once, so it is compiled once; a batch runs it as one executemany, which SQLAlchemy sends as
# multi-row INSERTs with RETURNING.
INSERT_MESSAGE = insert(outgoing_message).on_conflict_do_nothing().returning(*SHOWN)


@functools.cache
def _insert_one_and_wake(columns: tuple[str, ...]) -> str:
    """One message in one statement (a single round trip and commit): the insert and, if a row was
    inserted, the NOTIFY that wakes the delivery workers.  Written once per set of columns."""
    values = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    shown = ", ".join(column.name for column in SHOWN)
    # only the table's column names, parameter numbers and the channel's constant are formatted in
    return (
        f"WITH inserted AS (INSERT INTO outgoing_message ({', '.join(columns)}) VALUES ({values})"  # noqa: S608
        f" ON CONFLICT DO NOTHING RETURNING {shown})"
        f" SELECT inserted.*, pg_notify('{QUEUE_CHANNEL}', '1') AS woken FROM inserted"
    )


async def insert_one(conn: asyncpg.Connection, values: dict[str, Any]) -> asyncpg.Record | None:
    """The inserted row, or None when a message with its idempotency key exists already (a racing
    request); the delivery workers of every process are woken."""
    columns = tuple(sorted(values))
    return await conn.fetchrow(_insert_one_and_wake(columns), *(values[name] for name in columns))


async def by_id(
    session: Executor, company_id: uuid.UUID, message_id: uuid.UUID, sender: uuid.UUID | None = None
) -> Row[Any] | None:
    query = select(*SHOWN).where(
        outgoing_message.c.company_id == company_id, outgoing_message.c.id == message_id
    )
    if sender:
        query = query.where(outgoing_message.c.user_id == sender)
    return (await session.execute(query)).first()


async def by_idempotency_key(
    session: Executor, company_id: uuid.UUID, user_id: uuid.UUID, key: str
) -> Row[Any] | None:
    return (
        await session.execute(
            select(*SHOWN).where(
                outgoing_message.c.company_id == company_id,
                outgoing_message.c.user_id == user_id,
                outgoing_message.c.idempotency_key == key,
            )
        )
    ).first()


async def insert_messages(
    session: Executor, rows: list[dict[str, Any]]
) -> dict[uuid.UUID, Row[Any]]:
    """A batch's inserted rows by id; a row whose idempotency key exists already (a racing request)
    is skipped.  The delivery workers of every process are woken by a notification with the number
    of new rows.
    """
    inserted = {row.id: row for row in (await session.execute(INSERT_MESSAGE, rows)).all()}
    if inserted:
        await wake_workers(session, len(inserted))
    return inserted


async def wake_workers(session: Executor, messages: int) -> None:
    """NOTIFY the delivery workers (delivered at commit; see Delivery.start)."""
    await session.execute(select(func.pg_notify(QUEUE_CHANNEL, str(messages))))


async def page(
    session: Executor,
    company_id: uuid.UUID,
    *,
    state: MessageState | None,
    user_id: uuid.UUID | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    query = select(*SHOWN).where(outgoing_message.c.company_id == company_id)
    if state:
        query = query.where(outgoing_message.c.state == state)
    if user_id:
        query = query.where(outgoing_message.c.user_id == user_id)
    if after:
        created, last_id = after
        query = query.where(
            or_(
                outgoing_message.c.created_at < created,
                and_(outgoing_message.c.created_at == created, outgoing_message.c.id < last_id),
            )
        )
    query = query.order_by(
        outgoing_message.c.created_at.desc(), outgoing_message.c.id.desc()
    ).limit(limit)
    return list((await session.execute(query)).all())


async def requeue(
    session: Executor,
    company_id: uuid.UUID,
    message_id: uuid.UUID,
    from_states: tuple[MessageState, ...],
) -> bool:
    done = await session.execute(
        update(outgoing_message)
        .where(
            outgoing_message.c.company_id == company_id,
            outgoing_message.c.id == message_id,
            outgoing_message.c.state.in_(from_states),
        )
        .values(
            state=MessageState.QUEUED,
            next_attempt_at=datetime.now().astimezone(),
            last_error=None,
            updated_at=datetime.now().astimezone(),
        )
        .returning(outgoing_message.c.id)
    )
    if done.first() is None:
        return False
    await wake_workers(session, 1)
    return True


LEAD_RECIPIENTS = """
SELECT DISTINCT ON (lead_id) lead_id, address, name FROM lead_address
WHERE company_id = $1 AND lead_id = ANY($2::uuid[])
ORDER BY lead_id, position
"""


async def lead_recipients(
    conn: asyncpg.Connection, company_id: uuid.UUID, lead_ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, str]]:
    """Each lead's first address and name."""
    return {
        row["lead_id"]: (row["address"], row["name"])
        for row in await conn.fetch(LEAD_RECIPIENTS, company_id, lead_ids)
    }


async def lead_for_address(
    session: Executor, company_id: uuid.UUID, address: str
) -> uuid.UUID | None:
    return await session.scalar(
        select(lead_address.c.lead_id)
        .where(lead_address.c.company_id == company_id, lead_address.c.address == address)
        .limit(1)
    )


async def unsubscribed(
    session: Executor, company_id: uuid.UUID, addresses: list[str]
) -> dict[str, str]:
    """The given addresses that get no marketing mail, each with why: ``unsubscribed`` or
    ``complained``."""
    rows = await session.execute(
        select(unsubscribe.c.address, unsubscribe.c.reason).where(
            unsubscribe.c.company_id == company_id, unsubscribe.c.address.in_(addresses)
        )
    )
    return {row.address: row.reason for row in rows}


async def add_complaint(session: Executor, company_id: uuid.UUID, address: str) -> None:
    """A complaint stops marketing mail as an unsubscribe does; an earlier unsubscribe now says
    complained."""
    stmt = insert(unsubscribe).values(
        company_id=company_id,
        address=address,
        lead_id=await lead_for_address(session, company_id, address),
        reason="complained",
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[unsubscribe.c.company_id, unsubscribe.c.address],
            set_={"reason": "complained"},
        )
    )


def marketing_refusal(refused: dict[str, str]) -> tuple[str, str]:
    """What a refused marketing send says (message, problem slug): a complaint is told apart."""
    complained = sorted(a for a, reason in refused.items() if reason == "complained")
    if complained:
        return "the recipient complained about mail (a spam report): " + ", ".join(
            complained
        ), "recipient-complained"
    return "the recipient unsubscribed from marketing mail: " + ", ".join(
        sorted(refused)
    ), "recipient-unsubscribed"


async def add_unsubscribe(
    session: Executor, company_id: uuid.UUID, address: str, lead_id: uuid.UUID | None
) -> bool:
    """True the first time only, so the event goes out once."""
    done = await session.execute(
        insert(unsubscribe)
        .values(company_id=company_id, address=address, lead_id=lead_id)
        .on_conflict_do_nothing()
        .returning(unsubscribe.c.address)
    )
    return done.first() is not None


# --- the events the service applies (consumers.py)
# ---------------------------------------------------------


async def settle_seen_in_sent(
    session: Executor, sightings: list[tuple[uuid.UUID, str, datetime]]
) -> None:
    """R21: the ``unknown`` messages among ``sightings`` (company, Message-ID, sent at) were sent,
    in one statement."""
    seen = select(
        func.unnest(literal([company_id for company_id, _, _ in sightings], ARRAY(Uuid))).label(
            "company_id"
        ),
        func.unnest(literal([message_id for _, message_id, _ in sightings], ARRAY(Text))).label(
            "message_id"
        ),
        func.unnest(
            literal([sent_at for _, _, sent_at in sightings], ARRAY(DateTime(timezone=True)))
        ).label("sent_at"),
    ).subquery("seen")
    await session.execute(
        update(outgoing_message)
        .where(
            outgoing_message.c.company_id == seen.c.company_id,
            outgoing_message.c.message_id == seen.c.message_id,
            outgoing_message.c.state == MessageState.UNKNOWN,
        )
        .values(
            state=move(MessageState.UNKNOWN, MessageState.SENT),
            sent_at=seen.c.sent_at,
            updated_at=func.now(),
            last_error="settled: the message was found in the Sent folder",
        )
    )


async def recipients_of(
    session: Executor, company_id: uuid.UUID, message_id: str
) -> list[str] | None:
    """The recipients of the company's message with this Message-ID."""
    recipients: list[str] | None = await session.scalar(
        select(outgoing_message.c.recipients).where(
            outgoing_message.c.company_id == company_id,
            outgoing_message.c.message_id == message_id,
        )
    )
    return recipients


async def lock_bounceable(
    session: Executor, company_id: uuid.UUID, message_id: str, states: tuple[MessageState, ...]
) -> Row[Any, Any, Any] | None:
    """The company's message with this Message-ID, if in one of ``states``, locked: id, state,
    recipients."""
    return (
        await session.execute(
            select(outgoing_message.c.id, outgoing_message.c.state, outgoing_message.c.recipients)
            .where(
                outgoing_message.c.company_id == company_id,
                outgoing_message.c.message_id == message_id,
                outgoing_message.c.state.in_(states),
            )
            .with_for_update()
        )
    ).first()


async def note_delivery(session: Executor, message_id: uuid.UUID, values: dict[str, Any]) -> None:
    """A delivery notice on a message row :func:`lock_bounceable` locked (and its state, for a hard
    bounce)."""
    await session.execute(
        # unscoped: by the id of a message row its caller read scoped and locked
        update(outgoing_message)
        .where(outgoing_message.c.id == message_id)
        .values(updated_at=func.now(), **values)
    )
