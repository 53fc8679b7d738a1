"""Helpers for the lead service's tests: publishing events, waiting for outcomes, making leads and mail."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from leadline_proto.events import EventBase, MailPayload, MailSyncedV1
from leadline_proto.subjects import STREAM_NAME

SECRET = "lead-tests-identity-secret"


async def publish(js: JetStreamContext, *events: EventBase, msg_id_prefix: str = "") -> None:
    for event in events:
        await js.publish(
            event.subject,
            event.model_dump_json().encode(),
            headers={"Nats-Msg-Id": msg_id_prefix + str(event.event_id)},
        )


async def events_on_stream(
    js: JetStreamContext, subject: str, company_id: uuid.UUID
) -> list[dict[str, Any]]:
    """Every event on ``subject`` for the company, read with a throwaway consumer."""
    durable = f"peek-{uuid.uuid4().hex[:10]}"
    await js.add_consumer(
        STREAM_NAME,
        ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=subject,
        ),
    )
    found = []
    try:
        sub = await js.pull_subscribe_bind(durable, stream=STREAM_NAME)
        while True:
            try:
                batch = await sub.fetch(500, timeout=0.5)
            except TimeoutError:
                break
            for msg in batch:
                body = json.loads(msg.data)
                if body.get("company_id") == str(company_id):
                    found.append(body)
    finally:
        await js.delete_consumer(STREAM_NAME, durable)
    return found


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = ""
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


async def create_lead(
    api: httpx.AsyncClient, *addresses: str, name: str = "Lead", **extra: Any
) -> dict[str, Any]:
    response = await api.post(
        "/v1/leads", json={"name": name, "addresses": list(addresses), **extra}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def timeline_of(api: httpx.AsyncClient, lead_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/leads/{lead_id}/timeline")
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def wait_for_timeline(
    api: httpx.AsyncClient, lead_id: str, count: int, timeout: float = 20.0
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        nonlocal found
        found = await timeline_of(api, lead_id)
        return len(found) >= count

    await eventually(enough, timeout, f"{count} timeline events")
    return found


T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday


def synced(
    company_id: uuid.UUID,
    *,
    message_id: str,
    from_address: str,
    to: list[str],
    mailbox_id: uuid.UUID | None = None,
    direction: Literal["inbound", "outbound"] = "inbound",
    minutes: int = 0,
    **extra: Any,
) -> MailSyncedV1:
    mailbox_id = mailbox_id or uuid.uuid4()
    return MailSyncedV1(
        company_id=company_id,
        payload=MailPayload(
            message_id=message_id,
            mailbox_id=mailbox_id,
            user_id=uuid.uuid4(),
            folder="inbox" if direction == "inbound" else "sent",
            direction=direction,
            from_address=from_address,
            to=to,
            sent_at=T0 + timedelta(minutes=minutes),
            subject=extra.pop("subject", "Hello"),
            text=extra.pop("text", "Body text"),
            **extra,
        ),
    )
