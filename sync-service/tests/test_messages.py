"""Hostile and unusual mail: malformed MIME kept with a defect flag and logged (R27), bounces (R17), complaints."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from leadline_kit.testing.clients import running_app

BOUNCE = """From: Mail Delivery System <MAILER-DAEMON@mx.customer.example>
To: {me}
Subject: Undelivered Mail Returned to Sender
Date: Mon, 23 Nov 2026 10:00:00 +0000
Message-ID: <bounce-1@mx.customer.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

Your message could not be delivered.

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.customer.example

Final-Recipient: rfc822; {lead}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

--b1
Content-Type: text/rfc822-headers

From: {me}
To: {lead}
Subject: Offer
Message-ID: <smart-mail-42@acme.example>

--b1--
"""

COMPLAINT = """From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>
To: {me}
Subject: FW: Offer
Date: Mon, 23 Nov 2026 12:00:00 +0000
Message-ID: <arf-{n}@arf.mail.yahoo.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="b1"

--b1
Content-Type: text/plain

This is an email abuse report for an email message received from IP 192.0.2.1.

--b1
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Yahoo!-Mail-Feedback/2.0
Version: 1
Original-Rcpt-To: {lead}

--b1
Content-Type: message/rfc822

From: {me}
To: {lead}
Subject: Offer
Message-ID: <smart-mail-{n}@acme.example>

Buy now
--b1--
"""


def malformed(i: int, sender: str, to: str) -> bytes:
    """Broken in the ways real mail is: bad boundaries, bad encodings, garbage headers."""
    variants = [
        f"From: {sender}\r\nTo: {to}\r\nSubject: broken {i}\r\nMessage-ID: <broken-{i}@x.example>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="never-closed"\r\n\r\n'
        "--never-closed\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n@@@not base64@@@\r\n",
        f"From: {sender}\r\nTo: {to}\r\nSubject: broken {i}\r\nMessage-ID: <broken-{i}@x.example>\r\n"
        "Content-Type: multipart/alternative\r\n\r\nno boundary parameter at all\r\n",
        f"From: {sender}\r\nTo: {to}\r\nSubject: =?utf-8?B?broken?= {i}\r\nMessage-ID: <broken-{i}@x.example>\r\n"
        'Content-Type: text/plain; charset="x-no-such-charset"\r\nContent-Transfer-Encoding: quoted-printable\r\n'
        "\r\n=ZZ=\r\n" + "x" * 5000 + "\r\n",
    ]
    return variants[i % len(variants)].encode()


async def test_mailbox_with_malformed_messages_syncs_the_rest_and_logs_each(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    lead = "frank@customer.example"
    good = [
        world.message(sender=lead, to=[me.address], subject=f"good {i}", body=f"message {i}\n" * 40)
        for i in range(488)
    ]
    bad = [malformed(i, lead, me.address) for i in range(12)]
    client = await world.imap(me)
    try:
        for i, raw in enumerate(good):
            await client.append("INBOX", raw)
            if i % 40 == 0 and bad:
                await client.append("INBOX", bad.pop())
        for raw in bad:
            await client.append("INBOX", raw)
    finally:
        await client.logout()
    # parsed in a worker process: hostile MIME never runs on the event loop
    async with running_app(world.app(sync_parse_processes=1)) as service:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        await world.wait_history(api, timeout=60)
        events = await world.synced(at_least=500, timeout=60)
        assert len(events) == 500
        defective = [e for e in events if e.payload.defect]
        assert len(defective) == 12
        assert sorted(e.payload.message_id for e in defective) == sorted(
            f"<broken-{i}@x.example>" for i in range(12)
        )
        errors = (await api.get("/v1/mail-sync/errors", params={"limit": 100})).json()["items"]
        assert len([e for e in errors if e["kind"] == "message_unreadable"]) == 12


async def test_lead_mail_without_a_message_id_gets_the_stand_in_of_its_whole_header(world) -> None:  # type: ignore[no-untyped-def]
    """The header scan reads only the fields it summarises; the stand-in Message-ID of a message without one
    is still the hash of its whole header block (IMAP's BODY[HEADER]), as before: the same message stays
    unique in the folder (R26) across that change and across rescans."""
    me = world.account()
    lead = "hana@customer.example"
    raw = (
        f"Received: from mx.customer.example by mx.acme.example; Mon, 23 Nov 2026 10:00:01 +0000\r\n"
        f"From: Hana <{lead}>\r\nTo: {me.address}\r\nSubject: no id\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        "\r\nA message without a Message-ID.\r\n"
    ).encode()
    await world.append(me, "INBOX", raw)
    async with running_app(world.app()) as service:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        await world.wait_history(api)
        [event] = await world.synced(at_least=1)
        header = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        assert (
            event.payload.message_id
            == f"<{hashlib.sha256(header).hexdigest()[:40]}@no-message-id.leadline.invalid>"
        )


async def test_bounce_of_mail_to_a_lead_is_published(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    lead, stranger = "gina@customer.example", "nobody@else.example"
    await world.append(
        me,
        "INBOX",
        BOUNCE.format(me=me.address, lead=lead).replace("\n", "\r\n").encode(),
        BOUNCE.format(me=me.address, lead=stranger)
        .replace("\n", "\r\n")
        .replace("bounce-1@", "bounce-2@")
        .encode(),
        COMPLAINT.format(me=me.address, lead=lead, n=50).replace("\n", "\r\n").encode(),
        COMPLAINT.format(me=me.address, lead="redacted@yahoo.com", n=51)
        .replace("\n", "\r\n")
        .encode(),
    )
    async with running_app(world.app()) as service:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        await world.wait_history(api)
        bounces = await world.events("mail.bounced", at_least=1)
        assert [
            (
                b.payload.original_message_id,
                b.payload.recipient,
                b.payload.status,
                b.payload.severity,
                b.payload.reason,
            )
            for b in bounces
        ] == [("<smart-mail-42@acme.example>", lead, "5.1.1", "hard", "user_unknown")]
        complaints = await world.events("mail.complained", at_least=2)
        assert (
            sorted(
                (
                    c.payload.original_message_id,
                    c.payload.recipient,
                    c.payload.feedback_type,
                    c.payload.reporter,
                )
                for c in complaints
            )
            == [  # a redacted report still names its original: the sender of that message knows whom it went to
                ("<smart-mail-50@acme.example>", lead, "abuse", "Yahoo!-Mail-Feedback/2.0"),
                ("<smart-mail-51@acme.example>", "", "abuse", "Yahoo!-Mail-Feedback/2.0"),
            ]
        )
        assert await world.synced() == [], (
            "a bounce or a complaint is not a conversation with the lead"
        )
        folders = (await api.get("/v1/mail-sync")).json()["folders"]
        inbox = next(f for f in folders if f["folder"] == "inbox")["completeness"]
        assert (inbox["bounces_stored"], inbox["complaints_stored"]) == (1, 2)


DELAYED_WITHOUT_RECIPIENT = """From: MAILER-DAEMON <>
To: {me}
Subject: Delayed Mail (still being retried)
Date: Mon, 23 Nov 2026 11:00:00 +0000
Message-ID: <delay-1@mx.customer.example>

This is the mail system. Your message has not yet been delivered; the system will keep trying.
Reason: 451 4.4.1 connection timed out

--- Below this line is a copy of the message headers.

From: {me}
Subject: Offer
Message-ID: <smart-mail-43@acme.example>
"""


async def test_a_notice_naming_no_recipient_is_published_for_its_original(world) -> None:  # type: ignore[no-untyped-def]
    """R17: the sender of the original knows its recipients; the notice is soft, never a conversation."""
    me = world.account()
    await world.append(
        me, "INBOX", DELAYED_WITHOUT_RECIPIENT.format(me=me.address).replace("\n", "\r\n").encode()
    )
    async with running_app(world.app()) as service:
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        await world.wait_history(api)
        bounces = await world.events("mail.bounced", at_least=1)
        assert [
            (
                b.payload.original_message_id,
                b.payload.recipient,
                b.payload.severity,
                b.payload.action,
            )
            for b in bounces
        ] == [("<smart-mail-43@acme.example>", "", "soft", "delayed")]
        assert await world.synced() == []
