"""Idempotency-Key: the same key returns the same message and sends once, also when requests race."""

from __future__ import annotations

import asyncio

from .conftest import HarnessFactory, SmtpFactory


async def test_same_key_same_message_even_when_racing(send_service: HarnessFactory, smtp_server: SmtpFactory,
                                                      quota_service: None, mailboxes: object) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    await app.add_account(server, type="customer_service")
    body = {"to": ["lead@example.org"], "subject": "once", "text": "only once"}
    responses = await asyncio.gather(*(app.user.post("/v1/messages", json=body, headers={"Idempotency-Key": "k-1"})
                                       for _ in range(6)))
    assert {r.status_code for r in responses} == {202}
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    [message_id] = ids
    done = await app.wait_for(message_id, {"sent", "failed", "unknown"})
    assert done["state"] == "sent"
    later = await app.user.post("/v1/messages", json=body, headers={"Idempotency-Key": "k-1"})
    assert later.json()["id"] == message_id and later.json()["state"] == "sent"
    other = await app.user.post("/v1/messages", json=body, headers={"Idempotency-Key": "k-2"})
    assert other.json()["id"] != message_id
    await app.wait_for(other.json()["id"], {"sent"})
    assert len(server.handler.by_message_id(done["message_id"])) == 1
    listed = (await app.user.get("/v1/messages")).json()["items"]
    assert len(listed) == 2
