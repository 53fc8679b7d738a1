"""A lead created a moment ago is mailed at once: the send service asks the lead service for a lead its copy
does not hold yet (its lead.created is on the way), keeps the answer briefly, and never guesses."""

from __future__ import annotations

import uuid

from leadline_kit.testing.clients import as_caller, make_identity

from .conftest import SECRET, HarnessFactory, SmtpFactory


async def test_a_lead_not_in_the_copy_yet_is_asked_of_the_lead_service(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    await app.add_account(server, type="customer_service")
    lead = app.lead_service.create(
        app.company_id, ["Fresh@Example.org", "other@example.org"], name="Fresh\nLead"
    )

    first = await app.user.post(
        "/v1/messages", json={"lead_ids": [str(lead)], "subject": "welcome", "text": "hi"}
    )
    assert first.status_code == 202, first.text
    assert first.json()["recipients"] == ["fresh@example.org"] and first.json()["lead_ids"] == [
        str(lead)
    ]
    assert (await app.wait_for(first.json()["id"], {"sent"}))["state"] == "sent"
    received = server.handler.by_message_id(first.json()["message_id"])
    assert len(received) == 1 and received[0].rcpt_tos == ["fresh@example.org"]
    assert received[0].message["To"] == "Fresh Lead <fresh@example.org>"
    # the answer stands in for the copy until the event arrives: one ask for both messages
    second = await app.user.post(
        "/v1/messages", json={"lead_ids": [str(lead)], "subject": "again", "text": "hi"}
    )
    assert second.status_code == 202, second.text
    assert [r.lead_ids for r in app.lead_service.asked] == [[lead]]

    # the lead service knows the lead only in its own company; a lead nobody knows stays unknown
    stranger = as_caller(app.client, make_identity("salesperson", company_id=uuid.uuid4()), SECRET)
    elsewhere = await stranger.post("/v1/messages", json={"lead_ids": [str(lead)], "text": "hi"})
    assert elsewhere.status_code == 422 and elsewhere.json()["type"].endswith("/unknown-lead"), (
        elsewhere.text
    )
    nobody = uuid.uuid4()
    unknown = await app.user.post(
        "/v1/messages", json={"lead_ids": [str(lead), str(nobody)], "text": "hi"}
    )
    assert unknown.status_code == 422 and unknown.json()["lead_ids"] == [str(nobody)], unknown.text

    # nobody answers: 503, not "unknown", and nothing queued
    await app.lead_service.subscription.unsubscribe()
    silent = await app.user.post(
        "/v1/messages", json={"lead_ids": [str(uuid.uuid4())], "text": "hi"}
    )
    assert silent.status_code == 503 and silent.json()["type"].endswith(
        "/lead-service-unavailable"
    ), silent.text
    listed = (await app.user.get("/v1/messages", params={"limit": 10})).json()["items"]
    assert sorted(m["subject"] for m in listed) == ["again", "welcome"]
