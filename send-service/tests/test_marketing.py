"""Marketing mail through a company campaigns account: headers, unsubscribe, UTM, mail.sent (R13, R15, R16)."""

from __future__ import annotations

import asyncio
import re
import uuid

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from leadline_proto.events import parse_event
from leadline_proto.subjects import STREAM_NAME

from .conftest import SMTP_USER, HarnessFactory, SmtpFactory


async def events_of(nats_url: str, subject: str, company_id: uuid.UUID, expected: int) -> list:  # type: ignore[type-arg]
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            subject, stream=STREAM_NAME, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        )
        found = []
        for _ in range(50):
            try:
                msgs = await sub.fetch(500, timeout=0.3)
            except Exception:
                msgs = []
            for m in msgs:
                event = parse_event(m.data)
                if event.company_id == company_id:
                    found.append(event)
                await m.ack()
            if len(found) >= expected:
                break
        return found
    finally:
        await nc.close()


async def test_marketing_mail_to_a_lead(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service(public_base_url="https://leadline.example")
    server = smtp_server(tls="starttls")
    account = await app.add_account(
        server,
        return_path="bounces@company.example.com",
        precedence="bulk",
        utm={"utm_source": "leadline", "utm_campaign": "spring"},
        default_bcc=["archive@company.example.com"],
        unsubscribe_url="mailto:unsubscribe@company.example.com?subject=unsubscribe",
    )
    lead = await app.add_lead(["Jane.Doe@Example.org"], name="Jäne Döe")
    sent = await app.user.post(
        "/v1/messages",
        json={
            "category": "marketing",
            "lead_ids": [str(lead)],
            "subject": "Frühling 🌷 offer",
            "text": "See https://shop.example/spring?x=1 now",
            "html": '<a href="https://shop.example/a?p=1&amp;q=2">go</a>',
        },
    )
    assert sent.status_code == 202, sent.text
    body = sent.json()
    assert body["state"] == "queued"
    done = await app.wait_for(body["id"], {"sent", "failed", "unknown"})
    assert done["state"] == "sent", done
    assert done["account"] == f"smtp:{account['id']}"

    [received] = server.handler.by_message_id(body["message_id"])
    assert received.mail_from == "bounces@company.example.com"  # Return-Path is the envelope sender
    assert sorted(received.rcpt_tos) == ["archive@company.example.com", "jane.doe@example.org"]
    msg = received.message
    assert msg["From"].addresses[0].display_name == "Company News"
    assert msg["From"].addresses[0].addr_spec == "news@company.example.com"
    assert msg["To"].addresses[0].display_name == "Jäne Döe"
    assert msg["To"].addresses[0].addr_spec == "jane.doe@example.org"
    assert "Bcc" not in msg
    assert msg["Subject"] == "Frühling 🌷 offer"
    assert b"Subject: =?utf-8?" in received.data  # encoded on the wire, not raw UTF-8
    assert msg["Precedence"] == "bulk"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Message-ID"] == body["message_id"] and msg["Date"]
    # one-click unsubscribe as receivers read it (RFC 2369, RFC 8058): the bytes the server got hold the
    # plain <https://...> and <mailto:...>, never RFC 2047-encoded, folded only after the comma
    header = re.search(rb"\r\nList-Unsubscribe: (.*?)\r\n(?! )", received.data, re.S)
    assert header, received.data[:2000]
    lines = header.group(1).split(b"\r\n")
    assert b"=?" not in header.group(1) and all(line.endswith(b",") for line in lines[:-1])
    targets = [t.strip() for t in b"".join(lines).split(b",")]
    assert targets[0].startswith(b"<https://") and targets[0].endswith(b">")
    assert targets[1] == b"<mailto:unsubscribe@company.example.com?subject=unsubscribe>"
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in received.data
    link = targets[0].strip(b"<>").decode()
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "https://shop.example/spring?x=1&utm_source=leadline&utm_campaign=spring" in text
    assert (
        'href="https://shop.example/a?p=1&amp;q=2&amp;utm_source=leadline&amp;utm_campaign=spring"'
        in html
    )
    assert link in text and link in html

    # the wire: STARTTLS before AUTH, AUTH as the account's user
    wire = bytes(server.handler.wire[-1])
    assert wire.index(b"STARTTLS") < wire.index(b"AUTH")
    assert server.handler.auth_attempts >= 1 and SMTP_USER

    # mail.sent went out through the outbox, once
    sent_events = await events_of(app.nats_url, "leadline.mail.sent.v1", app.company_id, 1)
    mine = [e for e in sent_events if e.payload.outgoing_message_id == uuid.UUID(body["id"])]
    assert len(mine) == 1
    assert mine[0].payload.message_id == body["message_id"]
    assert mine[0].payload.category == "marketing"
    assert mine[0].payload.to == ["jane.doe@example.org"]

    # one-click unsubscribe: public, no identity; GET only shows a form
    path = "/v1/unsubscribe/" + link.rsplit("/", 1)[1]
    page = await app.client.get(path)
    assert page.status_code == 200 and "<form method='post'>" in page.text
    for _ in range(2):  # repeated one-click posts are harmless
        posted = await app.client.post(
            path,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert posted.status_code == 200
    unsub = await events_of(app.nats_url, "leadline.lead.unsubscribed.v1", app.company_id, 1)
    await asyncio.sleep(0.3)
    assert len(unsub) == 1 and unsub[0].payload.lead_id == lead
    assert unsub[0].payload.address == "jane.doe@example.org"
    again = await app.user.post(
        "/v1/messages",
        json={"category": "marketing", "lead_ids": [str(lead)], "subject": "more", "text": "x"},
    )
    assert again.status_code == 422 and again.json()["type"].endswith("/recipient-unsubscribed")
    # a forged token is refused
    forged = await app.client.post(path[:-3] + "AAA")
    assert forged.status_code == 404
