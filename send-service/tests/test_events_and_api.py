"""Lead copy, bounces, complaints, listing, test connection and metrics."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import nats

from leadline_kit.pagination import encode_cursor
from leadline_kit.testing.clients import as_caller, make_identity
from leadline_proto.events import (
    EventBase,
    LeadDeletedV1,
    LeadPayload,
    LeadUpdatedV1,
    MailBouncedPayload,
    MailBouncedV1,
    MailComplainedPayload,
    MailComplainedV1,
    utcnow,
)

from .conftest import SECRET, HarnessFactory, SendHarness, SmtpFactory


async def publish(app: SendHarness, event: EventBase) -> None:
    nc = await nats.connect(app.nats_url)
    try:
        await nc.jetstream().publish(
            event.subject,
            event.model_dump_json().encode(),
            headers={"Nats-Msg-Id": str(event.event_id)},
        )
    finally:
        await nc.close()


async def test_lead_changes_bounces_and_listing(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    await app.add_account(server, type="customer_service")
    lead = await app.add_lead(["old@example.org"], name="Lead")
    await publish(
        app,
        LeadUpdatedV1(
            company_id=app.company_id,
            payload=LeadPayload(
                lead_id=lead,
                name="Lead",
                addresses=["New@Example.org", "old@example.org"],
                created_at=utcnow(),
            ),
        ),
    )
    for _ in range(100):
        response = await app.user.post(
            "/v1/messages", json={"lead_ids": [str(lead)], "text": "hi", "subject": "probe"}
        )
        assert response.status_code == 202
        if response.json()["recipients"] == ["new@example.org"]:
            break
        await asyncio.sleep(0.05)
    message = response.json()
    assert message["recipients"] == ["new@example.org"] and message["lead_ids"] == [str(lead)]
    assert (await app.wait_for(message["id"], {"sent"}))["state"] == "sent"

    # a soft notice (delayed) is recorded, the message stays sent (R17)
    await publish(
        app,
        MailBouncedV1(
            company_id=app.company_id,
            payload=MailBouncedPayload(
                original_message_id=message["message_id"],
                recipient="new@example.org",
                status="4.4.1",
                action="delayed",
                severity="soft",
                reason="expired",
                diagnostic="still trying",
                bounced_at=datetime.now(UTC),
            ),
        ),
    )
    for _ in range(100):
        delayed = (await app.user.get(f"/v1/messages/{message['id']}")).json()
        if delayed["delivery_notice"]:
            break
        await asyncio.sleep(0.05)
    assert delayed["state"] == "sent" and delayed["delivery_notice"]["severity"] == "soft"
    # a hard bounce that names no recipient but our Message-ID: bounced, for the message's own recipient
    await publish(
        app,
        MailBouncedV1(
            company_id=app.company_id,
            payload=MailBouncedPayload(
                original_message_id=message["message_id"],
                recipient="",
                status="5.1.1",
                reason="user_unknown",
                bounced_at=datetime.now(UTC),
            ),
        ),
    )
    bounced = await app.wait_for(message["id"], {"bounced"})
    assert bounced["state"] == "bounced" and bounced["last_error"].startswith(
        "bounced for new@example.org: 5.1.1"
    )
    assert bounced["delivery_notice"] | {"received_at": None} == {
        "severity": "hard",
        "status": "5.1.1",
        "reason": "user_unknown",
        "recipient": "new@example.org",
        "diagnostic": "",
        "received_at": None,
    }
    # a complaint naming nobody (redacted) but our Message-ID: its one recipient gets no more marketing mail
    await publish(
        app,
        MailComplainedV1(
            company_id=app.company_id,
            payload=MailComplainedPayload(
                original_message_id=message["message_id"],
                recipient="",
                complained_at=datetime.now(UTC),
            ),
        ),
    )
    marketing = {"category": "marketing", "lead_ids": [str(lead)], "subject": "offer", "text": "x"}
    for _ in range(100):
        refused = await app.user.post("/v1/messages", json=marketing)
        if refused.json().get("type", "").endswith("/recipient-complained"):
            break
        await asyncio.sleep(0.05)
    assert refused.status_code == 422 and refused.json()["addresses"] == ["new@example.org"], (
        refused.text
    )
    assert "complained" in refused.json()["detail"]
    personal = await app.user.post(
        "/v1/messages", json={"lead_ids": [str(lead)], "text": "still one-to-one"}
    )
    assert personal.status_code == 202, "a complaint stops marketing mail only"

    await publish(
        app,
        LeadDeletedV1(
            company_id=app.company_id,
            payload=LeadPayload(lead_id=lead, addresses=[], created_at=utcnow()),
        ),
    )
    for _ in range(100):
        gone = await app.user.post("/v1/messages", json={"lead_ids": [str(lead)], "text": "hi"})
        if gone.status_code == 422:
            break
        await asyncio.sleep(0.05)
    assert gone.json()["type"].endswith("/unknown-lead")

    # listing: newest first, cursor pages, filter by state, company-scoped
    everything = (await app.user.get("/v1/messages", params={"limit": 200})).json()["items"]
    first = (await app.user.get("/v1/messages", params={"limit": 1})).json()
    assert first["items"][0]["id"] == everything[0]["id"] and first["next_cursor"]
    second = (
        await app.user.get("/v1/messages", params={"limit": 1, "cursor": first["next_cursor"]})
    ).json()
    assert second["items"][0]["id"] == everything[1]["id"]
    for bad in (
        "not-base64!",
        encode_cursor("yesterday", uuid.uuid4()),
        encode_cursor(utcnow().isoformat(), "x"),
    ):
        refused = await app.user.get("/v1/messages", params={"cursor": bad})
        assert refused.status_code == 400 and refused.json()["type"].endswith("/invalid-cursor"), (
            refused.text
        )
    only_bounced = (await app.user.get("/v1/messages", params={"state": "bounced"})).json()["items"]
    assert [m["id"] for m in only_bounced] == [message["id"]]
    # a salesperson sees only their own messages; an administrator sees the company's
    colleague = as_caller(
        app.client, make_identity("salesperson", company_id=app.company_id), SECRET
    )
    assert (await colleague.get("/v1/messages")).json()["items"] == []
    assert (await colleague.get(f"/v1/messages/{message['id']}")).status_code == 404
    assert (await colleague.post(f"/v1/messages/{message['id']}/resend")).status_code == 404
    assert len((await app.admin.get("/v1/messages")).json()["items"]) == len(everything)
    other = await send_service()
    assert (await other.user.get("/v1/messages")).json()["items"] == []
    assert (await other.user.get(f"/v1/messages/{message['id']}")).status_code == 404
    assert (await app.user.get(f"/v1/messages/{uuid.uuid4()}")).status_code == 404
    # a path that is no message id is not a message: 404, and GET on the batch path is a 405 naming POST
    malformed = await app.user.get("/v1/messages/not-an-id")
    assert (
        malformed.status_code == 404
        and malformed.headers["content-type"] == "application/problem+json"
    )
    on_batch = await app.user.get("/v1/messages/batch")
    assert on_batch.status_code == 405 and on_batch.headers["allow"] == "POST", on_batch.text


async def test_test_connection_and_metrics(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    account = await app.add_account(server, type="customer_service")
    probe = await app.admin.post(f"/v1/smtp-accounts/{account['id']}/test-connection")
    assert probe.json()["reachable"] is True
    server.controller.stop()
    down = await app.admin.post(f"/v1/smtp-accounts/{account['id']}/test-connection")
    assert down.json()["reachable"] is False and "Could not connect" in down.json()["detail"]
    salesperson = await app.user.post(f"/v1/smtp-accounts/{account['id']}/test-connection")
    assert salesperson.status_code == 403
    listed = (await app.user.get("/v1/smtp-accounts")).json()
    assert listed[0]["has_password"] is True and "password" not in listed[0]
    metrics = (await app.client.get("/metrics")).text
    for name in (
        "leadline_send_messages{",
        "leadline_send_smtp_replies_total",
        "leadline_send_retries_total",
        "leadline_send_smtp_seconds_bucket",
        "leadline_send_delivery_seconds_bucket",
    ):
        assert name in metrics
