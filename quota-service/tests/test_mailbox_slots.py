"""The company mailbox limit (R9) through NATS: claims, FIFO of pending mailboxes, grants as events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
from nats.aio.client import Client
from sqlalchemy import Select, func, select

from leadline_kit.db import Database
from leadline_proto.events import (
    CompanyPayload,
    CompanyUpdatedV1,
    Event,
    MailboxConnectionPayload,
    MailboxDisconnectedV1,
    utcnow,
)
from leadline_proto.requests import MailboxSlotReply, MailboxSlotRequest
from leadline_proto.subjects import RPC_MAILBOX_SLOT_CLAIM, RPC_MAILBOX_SLOT_RELEASE
from leadline_quota.models import company, processed

GRANTED = "leadline.quota.mailbox_slot_granted.v1"
StreamEvents = Callable[[str, uuid.UUID, int], Awaitable[list[Event]]]


async def slot(
    nc: Client, subject: str, company: uuid.UUID, mailbox: uuid.UUID
) -> MailboxSlotReply:
    msg = await nc.request(
        subject,
        MailboxSlotRequest(company_id=company, mailbox_id=mailbox).model_dump_json().encode(),
        timeout=10,
    )
    return MailboxSlotReply.model_validate_json(msg.data)


async def publish(nc: Client, event: CompanyUpdatedV1 | MailboxDisconnectedV1) -> None:
    await nc.jetstream().publish(
        event.subject,
        event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": str(event.event_id)},
    )


def company_update(company: uuid.UUID, limit: int | None, **envelope: object) -> CompanyUpdatedV1:
    return CompanyUpdatedV1(
        company_id=company, payload=CompanyPayload(name="Acme", mailbox_limit=limit), **envelope
    )


async def wait_until(db: Database, query: Select[Any], expected: object) -> None:
    for _ in range(150):
        async with db.session() as session:
            if await session.scalar(query) == expected:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never saw {expected!r}")


def limit_of(company_id: uuid.UUID) -> Select[Any]:
    return select(company.c.mailbox_limit).where(company.c.company_id == company_id)


def was_processed(event_id: uuid.UUID) -> Select[Any]:
    return select(func.count()).select_from(processed).where(processed.c.event_id == event_id)


async def test_pending_mailboxes_are_granted_oldest_first(
    quota_service: httpx.AsyncClient, nc: Client, db: Database, stream_events: StreamEvents
) -> None:
    company = uuid.uuid4()
    mailboxes = [uuid.uuid4() for _ in range(5)]
    await publish(nc, company_update(company, 2))
    await wait_until(db, limit_of(company), 2)
    answers = [await slot(nc, RPC_MAILBOX_SLOT_CLAIM, company, m) for m in mailboxes]
    assert [(a.status, a.position) for a in answers] == [
        ("granted", None),
        ("granted", None),
        ("pending", 1),
        ("pending", 2),
        ("pending", 3),
    ]
    again = await slot(nc, RPC_MAILBOX_SLOT_CLAIM, company, mailboxes[3])
    assert (again.status, again.position) == ("pending", 2)  # asking again keeps the place

    assert (await slot(nc, RPC_MAILBOX_SLOT_RELEASE, company, mailboxes[0])).status == "released"
    grants = await stream_events(GRANTED, company, 1)
    assert [e.payload.mailbox_id for e in grants] == [mailboxes[2]]  # type: ignore[union-attr]
    assert (await slot(nc, RPC_MAILBOX_SLOT_CLAIM, company, mailboxes[3])).position == 1

    await publish(nc, company_update(company, 10))
    grants = await stream_events(GRANTED, company, 3)
    assert [e.payload.mailbox_id for e in grants] == mailboxes[2:]  # type: ignore[union-attr]


async def test_disconnect_event_frees_a_slot_and_an_older_limit_event_is_ignored(
    quota_service: httpx.AsyncClient, nc: Client, db: Database, stream_events: StreamEvents
) -> None:
    company = uuid.uuid4()
    first, waiting = uuid.uuid4(), uuid.uuid4()
    newer = company_update(company, 1)
    older = company_update(company, 50, occurred_at=newer.occurred_at - timedelta(minutes=5))
    await publish(nc, newer)
    await publish(nc, older)  # arrives late: must not raise the limit to 50
    await wait_until(db, was_processed(older.event_id), 1)
    assert (await slot(nc, RPC_MAILBOX_SLOT_CLAIM, company, first)).status == "granted"
    assert (await slot(nc, RPC_MAILBOX_SLOT_CLAIM, company, waiting)).status == "pending"

    await publish(
        nc,
        MailboxDisconnectedV1(
            company_id=company,
            payload=MailboxConnectionPayload(
                mailbox_id=first, user_id=uuid.uuid4(), address="a@example.com"
            ),
            occurred_at=utcnow() + timedelta(seconds=1),
        ),
    )
    grants = await stream_events(GRANTED, company, 1)
    assert [e.payload.mailbox_id for e in grants] == [waiting]  # type: ignore[union-attr]
    assert (await slot(nc, RPC_MAILBOX_SLOT_CLAIM, company, first)).status == "pending"


async def test_no_limit_grants_everyone(quota_service: httpx.AsyncClient, nc: Client) -> None:
    company = uuid.uuid4()
    answers = await asyncio.gather(
        *(slot(nc, RPC_MAILBOX_SLOT_CLAIM, company, uuid.uuid4()) for _ in range(20))
    )
    assert {a.status for a in answers} == {"granted"}


async def test_concurrent_claims_never_pass_the_limit(
    quota_service: httpx.AsyncClient, nc: Client, db: Database
) -> None:
    company = uuid.uuid4()
    await publish(nc, company_update(company, 3))
    await wait_until(db, limit_of(company), 3)
    answers = await asyncio.gather(
        *(slot(nc, RPC_MAILBOX_SLOT_CLAIM, company, uuid.uuid4()) for _ in range(20))
    )
    assert sum(a.status == "granted" for a in answers) == 3
    assert sorted(a.position for a in answers if a.position) == list(range(1, 18))
