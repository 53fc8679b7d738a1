"""The Life of the Lead from events on the real stream: dedup, sources, R11 removal, 300 cap, bounces."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Literal

import httpx
import pytest
from leadtest import T0, create_lead, eventually, publish, synced, timeline_of, wait_for_timeline
from nats.js import JetStreamContext

from leadline_kit.identity import Identity
from leadline_lead.timeline.schemas import Timeline
from leadline_proto.events import (
    CompanyPayload,
    CompanyUpdatedV1,
    LeadUnsubscribedPayload,
    LeadUnsubscribedV1,
    MailBouncedPayload,
    MailBouncedV1,
    MailboxConnectionPayload,
    MailboxDisconnectedV1,
    MailComplainedPayload,
    MailComplainedV1,
    MailSentPayload,
    MailSentV1,
)


def disconnected(
    company: uuid.UUID, mailbox: uuid.UUID, keep_history: bool
) -> MailboxDisconnectedV1:
    return MailboxDisconnectedV1(
        company_id=company,
        payload=MailboxConnectionPayload(
            mailbox_id=mailbox,
            user_id=uuid.uuid4(),
            address="me@mycorp.example",
            keep_history=keep_history,
        ),
    )


def smart_mail(
    company: uuid.UUID,
    *,
    message_id: str,
    to: list[str],
    category: Literal["personal", "marketing"] = "personal",
    minutes: int = 0,
    mailbox_id: uuid.UUID | None = None,
) -> MailSentV1:
    return MailSentV1(
        company_id=company,
        payload=MailSentPayload(
            message_id=message_id,
            mailbox_id=mailbox_id,
            user_id=uuid.uuid4(),
            direction="outbound",
            from_address="me@mycorp.example",
            to=to,
            subject="Offer",
            sent_at=T0 + timedelta(minutes=minutes),
            html="<p>Our <b>offer</b> &amp; terms</p>",
            outgoing_message_id=uuid.uuid4(),
            category=category,
        ),
    )


async def test_synced_mail_becomes_a_timeline_event(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    lead = await create_lead(api, "Lead@Example.com")
    mailbox = uuid.uuid4()
    event = synced(
        admin.company_id,
        message_id="<m1@example.com>",
        from_address="LEAD@example.com",
        to=["me@mycorp.example"],
        cc=["boss@mycorp.example"],
        mailbox_id=mailbox,
        subject="Question",
        text="",
        html="<div>Hi <script>alert(1)</script>there &lt;3</div>",
    )
    await publish(js, event)
    (item,) = await wait_for_timeline(api, lead["id"], 1)
    assert item["kind"] == "email_received" and item["direction"] == "inbound"
    assert item["from_address"] == "lead@example.com" and item["to"] == ["me@mycorp.example"]
    assert item["cc"] == ["boss@mycorp.example"] and item["subject"] == "Question"
    assert item["snippet"] == "Hi there <3"
    assert item["message_id"] == "<m1@example.com>" and item["folder"] == "inbox"
    assert item["mailbox_id"] == str(mailbox) and item["user_id"] == str(event.payload.user_id)
    assert item["sources"] == [{"kind": "mailbox", "mailbox_id": str(mailbox)}]
    # the hand-serialised response is exactly the documented model
    body = (await api.get(f"/v1/leads/{lead['id']}/timeline")).json()
    assert Timeline.model_validate(body).model_dump(mode="json") == body


async def test_duplicate_delivery_is_applied_once(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    lead = await create_lead(api, "lead@example.com")
    event = synced(
        admin.company_id,
        message_id="<dup@example.com>",
        from_address="lead@example.com",
        to=["me@mycorp.example"],
    )
    # the same event twice, past JetStream's de-duplication (different Nats-Msg-Id)
    await publish(js, event, msg_id_prefix="a-")
    await publish(js, event, msg_id_prefix="b-")
    marker = synced(
        admin.company_id,
        message_id="<after@example.com>",
        from_address="lead@example.com",
        to=["me@mycorp.example"],
        minutes=5,
    )
    await publish(js, marker)
    items = await wait_for_timeline(api, lead["id"], 2)
    assert [i["message_id"] for i in items] == ["<after@example.com>", "<dup@example.com>"]


async def test_same_message_from_two_mailboxes_is_one_event_with_two_sources(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    company = admin.company_id
    lead = await create_lead(api, "lead@example.com")
    mine, colleagues = uuid.uuid4(), uuid.uuid4()
    shared = [
        synced(
            company,
            message_id="<shared@example.com>",
            from_address="lead@example.com",
            to=["me@mycorp.example", "colleague@mycorp.example"],
            mailbox_id=box,
        )
        for box in (mine, colleagues)
    ]
    only_mine = synced(
        company,
        message_id="<only-mine@example.com>",
        from_address="lead@example.com",
        to=["me@mycorp.example"],
        mailbox_id=mine,
        minutes=1,
    )
    await publish(js, *shared, only_mine)

    async def two_sources() -> bool:
        items = await timeline_of(api, lead["id"])
        return len(items) == 2 and len(items[1]["sources"]) == 2

    await eventually(two_sources, what="the shared message with two sources")
    items = await timeline_of(api, lead["id"])
    assert [i["message_id"] for i in items] == ["<only-mine@example.com>", "<shared@example.com>"]
    assert {s["mailbox_id"] for s in items[1]["sources"]} == {str(mine), str(colleagues)}

    # keep history: nothing changes
    await publish(js, disconnected(company, colleagues, keep_history=True))
    # removing my mailbox's history keeps what my colleague's mailbox also brought (R11)
    await publish(js, disconnected(company, mine, keep_history=False))

    async def only_shared_left() -> bool:
        return [i["message_id"] for i in await timeline_of(api, lead["id"])] == [
            "<shared@example.com>"
        ]

    await eventually(only_shared_left, what="R11 removal of my mailbox")
    (left,) = await timeline_of(api, lead["id"])
    assert left["sources"] == [{"kind": "mailbox", "mailbox_id": str(colleagues)}]
    assert left["mailbox_id"] == str(colleagues)

    await publish(js, disconnected(company, colleagues, keep_history=False))

    async def empty() -> bool:
        return await timeline_of(api, lead["id"]) == []

    await eventually(empty, what="R11 removal of the last source")


async def test_smart_mail_then_synced_from_sent_is_one_event(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    company = admin.company_id
    lead = await create_lead(api, "lead@example.com")
    mailbox = uuid.uuid4()
    sent = smart_mail(
        company, message_id="<smart@mycorp.example>", to=["lead@example.com"], mailbox_id=mailbox
    )
    copy = synced(
        company,
        message_id="smart@mycorp.example",
        from_address="me@mycorp.example",
        to=["lead@example.com"],
        direction="outbound",
        mailbox_id=mailbox,
    )
    # and the other way round: synced first, Smart Mail event late
    synced_first = synced(
        company,
        message_id="<late@mycorp.example>",
        from_address="me@mycorp.example",
        to=["lead@example.com"],
        direction="outbound",
        minutes=10,
    )
    late = smart_mail(
        company, message_id="<late@mycorp.example>", to=["lead@example.com"], minutes=10
    )
    # first batch: two new messages; second batch: their other halves, merged by ON CONFLICT in the database
    await publish(js, sent, synced_first)
    await wait_for_timeline(api, lead["id"], 2)
    await publish(js, copy, late)

    async def settled() -> bool:
        items = await timeline_of(api, lead["id"])
        return len(items) == 2 and all(len(i["sources"]) == 2 for i in items)

    await eventually(settled, what="two Smart Mail events with two sources each")
    items = await timeline_of(api, lead["id"])
    assert [i["kind"] for i in items] == ["smart_mail_sent", "smart_mail_sent"]
    first = items[1]
    assert {s["kind"] for s in first["sources"]} == {"smart_mail", "mailbox"}
    assert first["snippet"] == "Our offer & terms"
    assert first["folder"] == "sent" and first["mailbox_id"] == str(mailbox)

    # removing the mailbox's history keeps the Smart Mail itself
    await publish(js, disconnected(company, mailbox, keep_history=False))

    async def smart_only() -> bool:
        items = await timeline_of(api, lead["id"])
        return len(items) == 2 and items[1]["sources"] == [
            {"kind": "smart_mail", "mailbox_id": None}
        ]

    await eventually(smart_only, what="Smart Mail kept after mailbox removal")
    assert (await timeline_of(api, lead["id"]))[1]["mailbox_id"] == str(mailbox)


async def test_timeline_shows_the_300_most_recent_of_301(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    lead = await create_lead(api, "busy@example.com")
    events = [
        synced(
            admin.company_id,
            message_id=f"<n{i}@example.com>",
            from_address="busy@example.com",
            to=["me@mycorp.example"],
            minutes=i,
        )
        for i in range(301)
    ]
    await publish(js, *events)

    async def all_applied() -> bool:
        items = await timeline_of(api, lead["id"])
        return (
            len(items) == 300
            and items[0]["message_id"] == "<n300@example.com>"
            and items[-1]["message_id"] == "<n1@example.com>"
        )

    with caplog.at_level(logging.INFO, logger="leadline.lead.consumer"):
        await eventually(all_applied, what="301 events applied")
    # applied in bulk, not by the one-by-one fallback
    assert not [r for r in caplog.records if "applying one by one" in r.getMessage()]
    items = await timeline_of(api, lead["id"])
    times = [i["occurred_at"] for i in items]
    assert times == sorted(times, reverse=True)
    assert "<n0@example.com>" not in {i["message_id"] for i in items}
    assert (
        len(
            (await api.get(f"/v1/leads/{lead['id']}/timeline", params={"limit": 5})).json()["items"]
        )
        == 5
    )
    assert (
        await api.get(f"/v1/leads/{lead['id']}/timeline", params={"limit": 301})
    ).status_code == 422


async def test_mail_involving_two_leads_reaches_both_and_others_are_ignored(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    company = admin.company_id
    one = await create_lead(api, "one@example.com", "one@other.example")
    two = await create_lead(api, "two@example.com")
    both = synced(
        company,
        message_id="<both@mycorp.example>",
        from_address="me@mycorp.example",
        to=["one@example.com", "ONE@other.example"],
        cc=["two@example.com"],
        direction="outbound",
    )
    stranger = synced(
        company,
        message_id="<stranger@example.com>",
        from_address="nobody@example.com",
        to=["me@mycorp.example"],
        minutes=1,
    )
    other_company = synced(
        uuid.uuid4(),
        message_id="<elsewhere@example.com>",
        from_address="one@example.com",
        to=["x@example.com"],
        minutes=2,
    )
    marker = synced(
        company,
        message_id="<marker@example.com>",
        from_address="two@example.com",
        to=["me@mycorp.example"],
        minutes=3,
    )
    await publish(js, both, stranger, other_company, marker)
    items_two = await wait_for_timeline(api, two["id"], 2)
    assert [i["message_id"] for i in items_two] == ["<marker@example.com>", "<both@mycorp.example>"]
    (item_one,) = await timeline_of(api, one["id"])
    assert item_one["kind"] == "email_sent" and item_one["to"] == [
        "one@example.com",
        "one@other.example",
    ]


async def test_bounce_marks_the_original_and_shows_on_the_timeline(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    company = admin.company_id
    lead = await create_lead(api, "typo@example.com")
    original = smart_mail(company, message_id="<offer@mycorp.example>", to=["typo@example.com"])
    bounce = MailBouncedV1(
        company_id=company,
        payload=MailBouncedPayload(
            original_message_id="<offer@mycorp.example>",
            recipient="Typo@Example.com",
            status="5.1.1",
            diagnostic="550 5.1.1 <typo@example.com>: user unknown",
            bounced_at=T0 + timedelta(minutes=2),
        ),
    )
    # the company blocks its own domain: that must not hide a lead's bounce
    own_domain = CompanyUpdatedV1(
        company_id=company, payload=CompanyPayload(name="MyCorp", domains=["mycorp.example"])
    )
    # the same bounce delivered twice, and found again in a mailbox
    mailbox = uuid.uuid4()
    again = bounce.model_copy(update={"event_id": uuid.uuid4()})
    in_mailbox = bounce.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "payload": bounce.payload.model_copy(update={"mailbox_id": mailbox}),
        }
    )
    await publish(js, own_domain, original, bounce, again, in_mailbox)
    items = await wait_for_timeline(api, lead["id"], 2)
    assert [i["kind"] for i in items] == ["bounce", "smart_mail_sent"]
    assert (
        items[0]["bounce_status"] == "5.1.1" and items[0]["bounce_recipient"] == "typo@example.com"
    )
    assert items[0]["subject"] == "Offer" and "user unknown" in items[0]["snippet"]
    assert items[1]["bounced"] is True and items[1]["bounced_at"] is not None
    assert (await api.get(f"/v1/leads/{lead['id']}")).json()["mail_status"] == "bounced"

    async def two_sources() -> bool:
        bounce_item = (await timeline_of(api, lead["id"]))[0]
        return {s["kind"] for s in bounce_item["sources"]} == {"bounce_notice", "mailbox"}

    await eventually(two_sources, what="the bounce with both of its sources")

    # a bounce that arrives before the message it is about still marks it
    early = MailBouncedV1(
        company_id=company,
        payload=MailBouncedPayload(
            original_message_id="<second@mycorp.example>",
            recipient="typo@example.com",
            bounced_at=T0 + timedelta(minutes=30),
        ),
    )
    await publish(
        js,
        early,
        smart_mail(
            company, message_id="<second@mycorp.example>", to=["typo@example.com"], minutes=20
        ),
    )
    items = await wait_for_timeline(api, lead["id"], 4)
    second = next(
        i
        for i in items
        if i["kind"] == "smart_mail_sent" and i["message_id"] == "<second@mycorp.example>"
    )
    assert second["bounced"] is True

    # a soft notice shows as delayed and marks nothing; a hard one that names no recipient finds the lead
    # through the message it returns
    third = smart_mail(
        company, message_id="<third@mycorp.example>", to=["typo@example.com"], minutes=40
    )
    delayed = MailBouncedV1(
        company_id=company,
        payload=MailBouncedPayload(
            original_message_id="<third@mycorp.example>",
            recipient="typo@example.com",
            status="4.4.1",
            action="delayed",
            severity="soft",
            diagnostic="still trying",
            bounced_at=T0 + timedelta(minutes=41),
        ),
    )
    await publish(js, third, delayed)
    items = await wait_for_timeline(api, lead["id"], 6)
    assert items[0]["kind"] == "delivery_delayed" and items[0]["bounce_status"] == "4.4.1"
    assert items[1]["message_id"] == "<third@mycorp.example>" and items[1]["bounced"] is False
    unnamed = MailBouncedV1(
        company_id=company,
        payload=MailBouncedPayload(
            original_message_id="<third@mycorp.example>",
            recipient="",
            status="5.1.1",
            bounced_at=T0 + timedelta(minutes=50),
        ),
    )
    await publish(js, unnamed)
    items = await wait_for_timeline(api, lead["id"], 7)
    assert items[0]["kind"] == "bounce" and items[0]["bounce_recipient"] == "typo@example.com"
    third_item = next(
        i
        for i in items
        if i["kind"] == "smart_mail_sent" and i["message_id"] == "<third@mycorp.example>"
    )
    assert third_item["bounced"] is True


async def test_unsubscribe_shows_on_the_lead(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    lead = await create_lead(api, "leaving@example.com")
    await publish(
        js,
        LeadUnsubscribedV1(
            company_id=admin.company_id,
            payload=LeadUnsubscribedPayload(address="Leaving@example.com"),
        ),
    )

    async def unsubscribed() -> bool:
        return bool((await api.get(f"/v1/leads/{lead['id']}")).json()["unsubscribed"])

    await eventually(unsubscribed, what="lead marked unsubscribed")
    assert (await api.get(f"/v1/leads/{lead['id']}")).json()["mail_status"] == "unsubscribed"


async def test_complaints_show_on_the_lead(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    """A spam report marks the lead complained; an opt-out report, unsubscribed; each is a timeline event."""
    company = admin.company_id
    angry, leaving = (
        await create_lead(api, "angry@example.com"),
        await create_lead(api, "optout@example.com"),
    )
    offer = smart_mail(company, message_id="<offer-9@mycorp.example>", to=["angry@example.com"])
    redacted = MailComplainedV1(  # names nobody: found through the message it returns
        company_id=company,
        payload=MailComplainedPayload(
            original_message_id="<offer-9@mycorp.example>",
            recipient="",
            reporter="Yahoo!-Mail-Feedback/2.0",
            mailbox_id=uuid.uuid4(),
            complained_at=T0 + timedelta(minutes=5),
        ),
    )
    opt_out = MailComplainedV1(
        company_id=company,
        payload=MailComplainedPayload(
            original_message_id="",
            recipient="OptOut@example.com",
            feedback_type="opt-out",
            complained_at=T0,
        ),
    )
    await publish(
        js, offer, redacted, redacted.model_copy(update={"event_id": uuid.uuid4()}), opt_out
    )
    items = await wait_for_timeline(api, angry["id"], 2)
    assert [(i["kind"], i["subject"]) for i in items] == [
        ("complaint", "Offer"),
        ("smart_mail_sent", "Offer"),
    ]
    assert (
        items[0]["snippet"]
        == "angry@example.com reported the mail as spam (abuse report by Yahoo!-Mail-Feedback/2.0)"
    )
    body = (await api.get(f"/v1/leads/{angry['id']}")).json()
    assert body["mail_status"] == "complained" and body["complained_at"] is not None
    (item,) = await wait_for_timeline(api, leaving["id"], 1)
    assert item["kind"] == "complaint" and "asked to get no more mail" in item["snippet"]
    body = (await api.get(f"/v1/leads/{leaving['id']}")).json()
    assert (body["mail_status"], body["complained_at"]) == ("unsubscribed", None)


async def test_hostile_mail_fields_are_stored_safely(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    lead = await create_lead(api, "lead@example.com")
    hostile = synced(
        admin.company_id,
        message_id="<nul\x00id@example.com>",
        from_address="lead@example.com",
        to=["me@mycorp.example", "not an address", "x\x00@example.com"],
        subject="Sub\x00ject" + "s" * 2000,
        from_name="Name\x00",
        text="",
        html="<p>" + "<div>" * 5000 + "deep\x00 text</p>",
    )
    await publish(js, hostile)
    (item,) = await wait_for_timeline(api, lead["id"], 1)
    assert item["subject"].startswith("Subject") and len(item["subject"]) == 998
    assert item["from_name"] == "Name" and item["to"] == ["me@mycorp.example"]
    assert item["snippet"] == "deep text"
