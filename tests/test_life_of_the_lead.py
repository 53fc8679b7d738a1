"""The product's job end to end, through the gateway, on real Dovecot and SMTP servers.

A user connects their own mailbox; mail with a lead reaches the lead's timeline and mail with
anyone else does not; Smart Mail goes out through the user's own SMTP account with their
address as From, a copy lands in their Sent folder, and the timeline records it once although
the sync later finds that copy (R12); a send over the account's quota is refused with 429.
"""

from __future__ import annotations

import imaplib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import httpx
import pytest

from leadline_kit.infra import DovecotServer
from tests.conftest import Suite
from tests.mail_servers import SmtpServer


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def append(
    dovecot: DovecotServer,
    user: str,
    password: str,
    folder: str,
    *,
    sender: str,
    to: str,
    subject: str,
) -> str:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Message-ID"] = make_msgid(domain="test.example")
    message["Date"] = format_datetime(datetime.now(UTC))
    message.set_content(f"{subject}\n\nbody text")
    imap = imaplib.IMAP4("127.0.0.1", dovecot.port)
    imap.login(user, password)
    imap.append(folder, None, None, message.as_bytes())
    imap.logout()
    return str(message["Message-ID"])


@pytest.fixture
def company(suite: Suite) -> dict[str, Any]:
    with suite.client() as client:
        created = client.post(
            "/v1/companies",
            headers={"Authorization": f"Bearer {suite.bootstrap_token}"},
            json={
                "name": "Acme",
                "domains": ["acme.example"],
                "administrator": {"email": f"sam-{uuid.uuid4().hex[:8]}@acme.example"},
            },
        )
        assert created.status_code == 201, created.text
        company: dict[str, Any] = created.json()
        return company


def test_mail_sync_to_timeline_and_smart_mail_once(
    suite: Suite, company: dict[str, Any], dovecot: DovecotServer, smtp_server: SmtpServer
) -> None:
    key = {"Authorization": f"Bearer {company['api_key']['key']}"}
    address, password = company["administrator"]["email"], "s3cret-" + uuid.uuid4().hex[:6]
    dovecot.add_user(address, password)
    smtp_server.add_user(address, password)
    lead_address = f"lee-{uuid.uuid4().hex[:6]}@lead.example"
    tag = uuid.uuid4().hex[:8]
    hello = append(
        dovecot,
        address,
        password,
        "INBOX",
        sender=lead_address,
        to=address,
        subject=f"Hello from Lee {tag}",
    )
    stranger = append(
        dovecot,
        address,
        password,
        "INBOX",
        sender="stranger@other.example",
        to=address,
        subject=f"Not a lead {tag}",
    )
    with suite.client() as client:
        lead = client.post(
            "/v1/leads", headers=key, json={"name": "Lee", "addresses": [lead_address]}
        )
        assert lead.status_code == 201, lead.text
        lead_id = lead.json()["id"]
        time.sleep(1)  # the sync service learns of the lead through its event
        connected = client.put(
            "/v1/mail-sync",
            headers=key,
            json={
                "provider": "custom",
                "address": address,
                "password": password,
                "imap": {"host": "localhost", "port": dovecot.port, "use_ssl": False},
                "smtp": {"host": "localhost", "port": smtp_server.port, "use_ssl": False},
            },
        )
        assert connected.status_code in (200, 201), connected.text
        assert "password" not in connected.text.lower() or password not in connected.text

        def timeline() -> list[dict[str, Any]]:
            response = client.get(f"/v1/leads/{lead_id}/timeline", headers=key)
            assert response.status_code == 200, response.text
            body = response.json()
            events: list[dict[str, Any]] = body["items"] if isinstance(body, dict) else body
            return events

        wait_for(
            "the lead's inbound mail on the timeline",
            lambda: any(f"Hello from Lee {tag}" in e["subject"] for e in timeline()),
        )
        assert not any("Not a lead" in e["subject"] for e in timeline())
        # "why is this mail (not) on the timeline?" through the gateway (issue 25)
        for message_id, expected in (
            (hello, ("on_timeline", "R6", lead_id)),
            (stranger, ("not_stored", "R6", None)),
        ):
            why = client.get(
                "/v1/mail-sync/messages", headers=key, params={"message_id": message_id}
            )
            assert why.status_code == 200, why.text
            places = why.json()["places"]
            found = [
                (p["outcome"], p["rule"], next((t["lead_id"] for t in p["timeline"]), None))
                for p in places
            ]
            assert found == [expected], places
        assert wait_for(
            "the mailbox enabled",
            lambda: client.get("/v1/mail-sync", headers=key).json()["status"] == "enabled",
        )

        sent = client.post(
            "/v1/messages",
            headers={**key, "Idempotency-Key": f"proposal-{tag}"},
            json={"lead_ids": [lead_id], "subject": f"Proposal {tag}", "text": "Here it is."},
        )
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["id"]
        again = client.post(
            "/v1/messages",
            headers={**key, "Idempotency-Key": f"proposal-{tag}"},
            json={"lead_ids": [lead_id], "subject": f"Proposal {tag}", "text": "Here it is."},
        )
        assert again.json()["id"] == message_id
        wait_for(
            "the message sent",
            lambda: client.get(f"/v1/messages/{message_id}", headers=key).json()["state"] == "sent",
        )
        received = smtp_server.received_with(f"Proposal {tag}".encode())
        assert len(received) == 1, "Smart Mail reached the SMTP server other than once"
        assert received[0].mail_from == address and received[0].rcpt_tos == [lead_address]
        assert (
            f"From: {address}".encode() in received[0].data or address.encode() in received[0].data
        )

        # the Sent copy is appended after the message is sent, on its own connection (R12): its note says when
        wait_for(
            "the Sent copy saved",
            lambda: (
                client.get(f"/v1/messages/{message_id}", headers=key).json()["sent_copy"]
                == "saved to Sent"
            ),
        )
        imap = imaplib.IMAP4("127.0.0.1", dovecot.port)
        imap.login(address, password)
        imap.select("Sent", readonly=True)
        _, hits = imap.search(None, "SUBJECT", f'"Proposal {tag}"')
        imap.logout()
        assert len(hits[0].split()) == 1, "the copy did not land in the Sent folder exactly once"

        wait_for(
            "Smart Mail on the timeline",
            lambda: any(f"Proposal {tag}" in e["subject"] for e in timeline()),
        )
        time.sleep(6)  # several Sent polls: the synced copy must not make a second event
        assert sum(f"Proposal {tag}" in e["subject"] for e in timeline()) == 1


def test_send_over_quota_is_429_with_retry_after(
    suite: Suite, company: dict[str, Any], dovecot: DovecotServer, smtp_server: SmtpServer
) -> None:
    key = {"Authorization": f"Bearer {company['api_key']['key']}"}
    address, password = company["administrator"]["email"], "pw-" + uuid.uuid4().hex[:6]
    dovecot.add_user(address, password)
    smtp_server.add_user(address, password)
    with suite.client() as client:
        connected = client.put(
            "/v1/mail-sync",
            headers=key,
            json={
                "provider": "custom",
                "address": address,
                "password": password,
                "imap": {"host": "localhost", "port": dovecot.port, "use_ssl": False},
                "smtp": {"host": "localhost", "port": smtp_server.port, "use_ssl": False},
            },
        )
        assert connected.status_code in (200, 201), connected.text
        mailbox_id = connected.json()["id"]
        limited = client.put(
            f"/v1/quotas/accounts/mailbox:{mailbox_id}",
            headers=key,
            json={"overrides": {"messages_per_hour": 1}},
        )
        assert limited.status_code == 200, limited.text
        first = client.post(
            "/v1/messages",
            headers=key,
            json={"to": ["first@lead.example"], "subject": "one", "text": "1"},
        )
        assert first.status_code == 202, first.text
        wait_for(
            "the first message sent",
            lambda: (
                client.get(f"/v1/messages/{first.json()['id']}", headers=key).json()["state"]
                == "sent"
            ),
        )
        second = client.post(
            "/v1/messages",
            headers=key,
            json={"to": ["second@lead.example"], "subject": "two", "text": "2"},
        )
        assert second.status_code == 429, second.text
        assert second.headers["content-type"].startswith("application/problem+json")
        assert int(second.headers["retry-after"]) > 0
        assert second.json().get("retry_at")


def test_wrong_company_and_wrong_role_through_the_gateway(
    suite: Suite, company: dict[str, Any]
) -> None:
    other = httpx.post(
        suite.gateway + "/v1/companies",
        headers={"Authorization": f"Bearer {suite.bootstrap_token}"},
        json={
            "name": "Other",
            "administrator": {"email": f"o-{uuid.uuid4().hex[:6]}@other.example"},
        },
    )
    other_key = {"Authorization": f"Bearer {other.json()['api_key']['key']}"}
    key = {"Authorization": f"Bearer {company['api_key']['key']}"}
    with suite.client() as client:
        lead = client.post(
            "/v1/leads", headers=key, json={"name": "Lee", "addresses": ["lee@x-lead.example"]}
        )
        assert lead.status_code == 201
        for path in (f"/v1/leads/{lead.json()['id']}", f"/v1/leads/{lead.json()['id']}/timeline"):
            response = client.get(path, headers=other_key)
            assert response.status_code == 404, f"{path}: {response.status_code}"
            assert response.headers["content-type"].startswith("application/problem+json")
