"""Activity report (R19): personal mail sent and received per current pipeline stage, per ISO week."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import httpx
from leadtest import T0, create_lead, publish, synced, wait_for_timeline
from nats.js import JetStreamContext

from leadline_kit.identity import Identity
from leadline_kit.testing.clients import make_identity
from leadline_proto.events import MailSentPayload, MailSentV1


async def test_activity_per_stage_per_week(
    api: httpx.AsyncClient,
    js: JetStreamContext,
    admin: Identity,
    caller: Callable[[Identity], httpx.AsyncClient],
) -> None:
    company = admin.company_id
    new = await create_lead(api, "new@example.com")
    won = await create_lead(api, "won@example.com", stage="won")
    week = 7 * 24 * 60
    events = [
        synced(company, message_id="<1@x>", from_address="new@example.com", to=["me@m.example"]),
        synced(
            company,
            message_id="<2@x>",
            from_address="me@m.example",
            to=["new@example.com"],
            direction="outbound",
            minutes=5,
        ),
        synced(
            company,
            message_id="<3@x>",
            from_address="won@example.com",
            to=["me@m.example"],
            minutes=10,
        ),
        synced(
            company,
            message_id="<4@x>",
            from_address="won@example.com",
            to=["me@m.example"],
            minutes=week,
        ),
        MailSentV1(
            company_id=company,
            payload=MailSentPayload(
                message_id="<5@x>",
                direction="outbound",
                from_address="me@m.example",
                to=["won@example.com"],
                sent_at=T0 + timedelta(minutes=week + 1),
                outgoing_message_id=uuid.uuid4(),
            ),
        ),
        # marketing mail is not personal: not counted
        MailSentV1(
            company_id=company,
            payload=MailSentPayload(
                message_id="<6@x>",
                direction="outbound",
                from_address="me@m.example",
                to=["won@example.com"],
                sent_at=T0 + timedelta(minutes=week + 2),
                outgoing_message_id=uuid.uuid4(),
                category="marketing",
            ),
        ),
        # outside the range
        synced(
            company,
            message_id="<7@x>",
            from_address="won@example.com",
            to=["me@m.example"],
            minutes=-week,
        ),
    ]
    await publish(js, *events)
    await wait_for_timeline(api, new["id"], 2)
    await wait_for_timeline(api, won["id"], 5)
    response = await api.get(
        "/v1/reports/activity", params={"from": "2026-03-02", "to": "2026-03-15"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [
        {"week": "2026-W10", "week_start": "2026-03-02", "stage": "new", "sent": 1, "received": 1},
        {"week": "2026-W10", "week_start": "2026-03-02", "stage": "won", "sent": 0, "received": 1},
        {"week": "2026-W11", "week_start": "2026-03-09", "stage": "won", "sent": 1, "received": 1},
    ]
    # another company sees none of it
    stranger = caller(make_identity("administrator"))
    assert (
        await stranger.get(
            "/v1/reports/activity", params={"from": "2026-03-02", "to": "2026-03-15"}
        )
    ).json()["rows"] == []
    # the lead's current stage counts
    await api.patch(f"/v1/leads/{new['id']}", json={"stage": "won"})
    rows = (
        await api.get("/v1/reports/activity", params={"from": "2026-03-02", "to": "2026-03-08"})
    ).json()["rows"]
    assert rows == [
        {"week": "2026-W10", "week_start": "2026-03-02", "stage": "won", "sent": 1, "received": 2}
    ]


async def test_bad_ranges_are_problems(api: httpx.AsyncClient) -> None:
    for params in (
        {"from": "2026-03-10", "to": "2026-03-01"},
        {"from": "2020-01-01", "to": "2026-01-01"},
        {"from": "yesterday"},
        {"to": "0"},
        {"from": "1700000000"},
    ):
        response = await api.get("/v1/reports/activity", params=params)
        assert response.status_code == 422, params
        assert response.headers["content-type"] == "application/problem+json"
    assert (await api.get("/v1/reports/activity")).json()["rows"] == []
