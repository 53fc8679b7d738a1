"""Idempotency-Key: the same key returns the same message and sends once, also when requests race."""

from __future__ import annotations

import asyncio

from .conftest import HarnessFactory, SmtpFactory


async def test_same_key_same_message_even_when_racing(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    await app.add_account(server, type="customer_service")
    body = {"to": ["lead@example.org"], "subject": "once", "text": "only once"}
    responses = await asyncio.gather(
        *(
            app.user.post("/v1/messages", json=body, headers={"Idempotency-Key": "k-1"})
            for _ in range(6)
        )
    )
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


async def test_a_key_reused_with_another_body_is_422(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    await app.add_account(server, type="customer_service")
    body = {"to": ["lead@example.org"], "subject": "first", "text": "the first body"}
    first = await app.user.post("/v1/messages", json=body, headers={"Idempotency-Key": "k-reused"})
    assert first.status_code == 202, first.text
    # the same request spelled otherwise (a default given) is the same request
    same = await app.user.post(
        "/v1/messages",
        json={**body, "category": "personal"},
        headers={"Idempotency-Key": "k-reused"},
    )
    assert same.status_code == 202 and same.json()["id"] == first.json()["id"]
    for changed in ({"subject": "second"}, {"to": ["other@example.org"]}, {"text": "another body"}):
        reused = await app.user.post(
            "/v1/messages", json={**body, **changed}, headers={"Idempotency-Key": "k-reused"}
        )
        assert reused.status_code == 422, reused.text
        assert reused.json()["type"].endswith("/idempotency-key-reused")
    batch = await app.user.post(
        "/v1/messages/batch",
        json={
            "messages": [
                {**body, "idempotency_key": "k-fresh"},
                {**body, "subject": "second", "idempotency_key": "k-reused"},
            ]
        },
    )
    assert batch.status_code == 422 and batch.json()["index"] == 1, batch.text
    again = await app.user.post(
        "/v1/messages/batch", json={"messages": [{**body, "idempotency_key": "k-reused"}]}
    )
    assert again.status_code == 202 and again.json()["items"][0]["id"] == first.json()["id"]
    await app.wait_for(first.json()["id"], {"sent"})
    listed = (await app.user.get("/v1/messages")).json()["items"]
    assert [m["id"] for m in listed] == [first.json()["id"]]
    assert len(server.handler.by_message_id(first.json()["message_id"])) == 1
