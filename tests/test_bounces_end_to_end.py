"""Bounces and complaints end to end (R17): Smart Mail out through aiosmtpd, notices for it into the Dovecot INBOX.

The sync recognises each notice; the send service marks a hard bounce's message ``bounced`` (also when the
notice names no recipient, only the returned Message-ID) and keeps a soft one's message ``sent``; the lead's
timeline shows ``bounce`` or ``delivery_delayed``.  A complaint (an ARF report whose recipient is redacted)
marks its lead ``complained``, shows as ``complaint`` on the timeline, and stops marketing mail to the lead.
"""

from __future__ import annotations

import imaplib
import time
import uuid
from typing import Any

from leadline_kit.infra import DovecotServer
from tests.conftest import Suite
from tests.mail_servers import SmtpServer
from tests.test_life_of_the_lead import company, wait_for  # noqa: F401 - the fixture and the poll

HARD = """From: Mail Delivery System <MAILER-DAEMON@mx.lead.example>
To: {me}
Subject: Undelivered Mail Returned to Sender
Message-ID: <{tag}-hard@mx.lead.example>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

This is the mail system at host mx.lead.example.

<{lead}>: host mx.lead.example[192.0.2.7] said: 550 5.1.1 <{lead}>: Recipient address rejected:
    User unknown in virtual mailbox table (in reply to RCPT TO command)

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.lead.example

Final-Recipient: rfc822; {lead}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <{lead}>: Recipient address rejected: User unknown

--B
Content-Type: text/rfc822-headers

From: {me}
To: {lead}
Subject: Offer
Message-ID: {original}

--B--
"""

SOFT = """From: MAILER-DAEMON <>
To: {me}
Subject: Delayed Mail (still being retried)
Message-ID: <{tag}-soft@mx.lead.example>

This is the mail system at host relay.example.

Your message could not be delivered to <{lead}> for 4 hours. The mail system will keep trying.
    451 4.4.1 mx.lead.example: connection timed out

--- Below this line is a copy of the message headers.

From: {me}
To: {lead}
Message-ID: {original}
"""

UNNAMED = """From: postmaster@[192.0.2.9]
To: {me}
Subject: Re: Offer
Message-ID: <{tag}-unnamed@relay.example>

Delivery failed permanently: 554 5.0.0 rejected by the receiving system.

------ This is a copy of the message, including all the headers. ------

From: {me}
Subject: Offer
Message-ID: {original}
"""

COMPLAINT = """From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>
To: {me}
Subject: FW: Offer
Message-ID: <{tag}-arf@arf.mail.yahoo.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="F"

--F
Content-Type: text/plain

This is an email abuse report for an email message received from IP 192.0.2.1.

--F
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Yahoo!-Mail-Feedback/2.0
Version: 1
Original-Rcpt-To: redacted@yahoo.com

--F
Content-Type: message/rfc822

From: {me}
To: redacted@yahoo.com
Subject: Offer
Message-ID: {original}

Here it is.
--F--
"""


def append_raw(dovecot: DovecotServer, user: str, password: str, raw: str) -> None:
    imap = imaplib.IMAP4("127.0.0.1", dovecot.port)
    imap.login(user, password)
    imap.append("INBOX", None, None, raw.replace("\n", "\r\n").encode())
    imap.logout()


def test_hard_soft_and_unnamed_bounces_mark_messages_and_timelines(
    suite: Suite,
    company: dict[str, Any],
    dovecot: DovecotServer,
    smtp_server: SmtpServer,
) -> None:
    key = {"Authorization": f"Bearer {company['api_key']['key']}"}
    me, password = company["administrator"]["email"], "s3cret-" + uuid.uuid4().hex[:6]
    dovecot.add_user(me, password)
    smtp_server.add_user(me, password)
    tag = uuid.uuid4().hex[:8]
    with suite.client() as client:
        leads = {}
        for name in ("hard", "soft", "unnamed", "complained"):
            address = f"{name}-{tag}@lead.example"
            created = client.post(
                "/v1/leads", headers=key, json={"name": name, "addresses": [address]}
            )
            assert created.status_code == 201, created.text
            leads[name] = (created.json()["id"], address)
        time.sleep(1)  # the sync and send services learn of the leads through their events
        connected = client.put(
            "/v1/mail-sync",
            headers=key,
            json={
                "provider": "custom",
                "address": me,
                "password": password,
                "imap": {"host": "localhost", "port": dovecot.port, "use_ssl": False},
                "smtp": {"host": "localhost", "port": smtp_server.port, "use_ssl": False},
            },
        )
        assert connected.status_code in (200, 201), connected.text
        wait_for(
            "the mailbox enabled",
            lambda: client.get("/v1/mail-sync", headers=key).json()["status"] == "enabled",
        )

        def message(message_id: str) -> dict[str, Any]:
            found: dict[str, Any] = client.get(f"/v1/messages/{message_id}", headers=key).json()
            return found

        def timeline(name: str) -> list[dict[str, Any]]:
            response = client.get(f"/v1/leads/{leads[name][0]}/timeline", headers=key)
            assert response.status_code == 200, response.text
            items: list[dict[str, Any]] = response.json()["items"]
            return items

        def of_kind(name: str, kind: str) -> dict[str, Any] | None:
            return next((i for i in timeline(name) if i["kind"] == kind), None)

        messages: dict[str, dict[str, Any]] = {}
        for name, (lead_id, _) in leads.items():
            sent = client.post(
                "/v1/messages",
                headers=key,
                json={
                    "lead_ids": [lead_id],
                    "subject": f"Offer {name} {tag}",
                    "text": "Here it is.",
                },
            )
            assert sent.status_code == 202, sent.text
            message_id = sent.json()["id"]
            wait_for("the Smart Mail sent", lambda m=message_id: message(m)["state"] == "sent")  # type: ignore[misc]
            messages[name] = message(message_id)
            assert len(smtp_server.received_with(f"Offer {name} {tag}".encode())) == 1
        for name, notice in (
            ("hard", HARD),
            ("soft", SOFT),
            ("unnamed", UNNAMED),
            ("complained", COMPLAINT),
        ):
            append_raw(
                dovecot,
                me,
                password,
                notice.format(
                    me=me, lead=leads[name][1], tag=tag, original=messages[name]["message_id"]
                ),
            )

        wait_for("the hard bounce", lambda: message(messages["hard"]["id"])["state"] == "bounced")
        hard = message(messages["hard"]["id"])["delivery_notice"]
        assert (hard["severity"], hard["status"], hard["reason"]) == (
            "hard",
            "5.1.1",
            "user_unknown",
        )
        wait_for(
            "the unnamed bounce", lambda: message(messages["unnamed"]["id"])["state"] == "bounced"
        )
        assert (
            message(messages["unnamed"]["id"])["delivery_notice"]["recipient"]
            == leads["unnamed"][1]
        )
        wait_for("the soft notice", lambda: message(messages["soft"]["id"])["delivery_notice"])
        soft = message(messages["soft"]["id"])
        assert soft["state"] == "sent" and soft["delivery_notice"]["severity"] == "soft"

        for name, kind in (("hard", "bounce"), ("soft", "delivery_delayed"), ("unnamed", "bounce")):
            notice = wait_for(
                f"the {kind} on the {name} lead's timeline",
                lambda n=name, k=kind: of_kind(n, k),  # type: ignore[misc]
            )
            assert notice["bounce_recipient"] == leads[name][1]
            original = wait_for(
                "the Smart Mail on the timeline",
                lambda n=name: of_kind(n, "smart_mail_sent"),  # type: ignore[misc]
            )
            assert original["bounced"] is (kind == "bounce")
        assert all(i["kind"] != "email_received" for name in leads for i in timeline(name)), (
            "a notice is not a conversation with the lead"
        )
        complaint = wait_for(
            "the complaint on the timeline", lambda: of_kind("complained", "complaint")
        )
        statuses = {
            name: client.get(f"/v1/leads/{lead_id}", headers=key).json()["mail_status"]
            for name, (lead_id, _) in leads.items()
        }
        assert statuses == {
            "hard": "bounced",
            "soft": "ok",
            "unnamed": "bounced",
            "complained": "complained",
        }

        # the complaint: its own timeline event, the message stays sent, no more marketing mail to the lead
        assert "reported the mail as spam" in complaint["snippet"], complaint
        assert message(messages["complained"]["id"])["state"] == "sent"
        lead_id = leads["complained"][0]

        def marketing() -> Any:
            body = {
                "category": "marketing",
                "lead_ids": [lead_id],
                "subject": f"News {tag}",
                "text": "x",
            }
            return client.post("/v1/messages", headers=key, json=body)

        refused = wait_for(
            "marketing refused",
            lambda: (
                (r := marketing()).json().get("type", "").endswith("/recipient-complained") and r
            ),
        )
        assert refused.status_code == 422 and refused.json()["addresses"] == [
            leads["complained"][1]
        ]
        personal = client.post(
            "/v1/messages", headers=key, json={"lead_ids": [lead_id], "text": "one to one"}
        )
        assert personal.status_code == 202, "a complaint stops marketing mail only"
        assert not smtp_server.received_with(f"News {tag}".encode())
