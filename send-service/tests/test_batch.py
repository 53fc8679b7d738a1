"""``POST /v1/messages/batch``: many messages in one request, all queued or none."""

from __future__ import annotations

from typing import Any

from .conftest import HarnessFactory, SmtpFactory


def _message(n: int, **fields: Any) -> dict[str, Any]:
    return {"to": [f"lead{n}@example.org"], "subject": f"Batch {n}", "text": f"Hello {n}", **fields}


async def test_a_batch_is_queued_in_order_and_each_message_sent_once(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service(smtp_connections=2)
    server = smtp_server(tls="starttls")
    await app.add_account(server, type="customer_service")
    body = {"messages": [_message(0, idempotency_key="batch-0"), _message(1), _message(2)]}
    response = await app.user.post("/v1/messages/batch", json=body)
    assert response.status_code == 202, response.text
    items = response.json()["items"]
    assert [i["subject"] for i in items] == ["Batch 0", "Batch 1", "Batch 2"]
    assert [i["recipients"] for i in items] == [
        ["lead0@example.org"],
        ["lead1@example.org"],
        ["lead2@example.org"],
    ]

    done = [await app.wait_for(i["id"], {"sent"}) for i in items]
    for item in done:
        [received] = server.handler.by_message_id(item["message_id"])
        assert received.rcpt_tos == item["recipients"]
        assert received.message["Subject"] == item["subject"]

    # the item's idempotency key works as the header does: the same message, never a second send
    again = await app.user.post(
        "/v1/messages/batch", json={"messages": [_message(0, idempotency_key="batch-0")]}
    )
    assert again.status_code == 202
    assert again.json()["items"][0]["id"] == items[0]["id"]
    listed = (await app.user.get("/v1/messages")).json()["items"]
    assert len(listed) == 3
    assert len(server.handler.by_message_id(items[0]["message_id"])) == 1


async def test_one_bad_message_refuses_the_whole_batch(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    await app.add_account(server, type="customer_service")
    sessions = len(server.handler.wire)
    body = {
        "messages": [_message(0), _message(1, subject="Hi\r\nBcc: evil@example.net"), _message(2)]
    }
    response = await app.user.post("/v1/messages/batch", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/header-injection") and problem["index"] == 1
    assert problem["detail"].startswith("messages[1]: ")
    assert (await app.user.get("/v1/messages")).json()["items"] == []
    assert len(server.handler.wire) == sessions

    too_many = await app.user.post(
        "/v1/messages/batch", json={"messages": [_message(n) for n in range(101)]}
    )
    assert (
        too_many.status_code == 422
        and too_many.headers["content-type"] == "application/problem+json"
    )
    empty = await app.user.post("/v1/messages/batch", json={"messages": []})
    assert empty.status_code == 422
