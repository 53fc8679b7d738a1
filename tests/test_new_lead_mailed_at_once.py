"""Read your own writes across services: a lead created through the gateway is mailed by the very next request.

The send service learns leads from ``lead.created``; the request that mails a lead created a moment before
may arrive first, and the send service then asks the lead service instead of refusing it (422 unknown-lead).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from tests.conftest import Suite
from tests.mail_servers import SmtpServer
from tests.test_life_of_the_lead import company, wait_for  # noqa: F401 - the fixture and the poll


def test_a_lead_created_and_mailed_in_the_next_request_gets_the_mail(
    suite: Suite,
    company: dict[str, Any],
    smtp_server: SmtpServer,
) -> None:
    key = {"Authorization": f"Bearer {company['api_key']['key']}"}
    tag = uuid.uuid4().hex[:8]
    username, password = f"cs-{tag}@acme.example", "pw-" + tag
    smtp_server.add_user(username, password)
    with suite.client() as client:
        account = client.post(
            "/v1/smtp-accounts",
            headers=key,
            json={
                "name": "customer service",
                "type": "customer_service",
                "host": "localhost",
                "port": smtp_server.port,
                "tls": "starttls",
                "username": username,
                "password": password,
                "from_email": username,
                "active": True,
            },
        )
        assert account.status_code == 201, account.text
        account_id = account.json()["id"]
        tested = client.post(
            f"/v1/smtp-accounts/{account_id}/test-email", headers=key, json={"to": username}
        )
        assert tested.status_code == 202, tested.text
        code = re.search(
            rb"is (\d{6})", smtp_server.received_with(f"To: {username}".encode())[-1].data
        )
        assert code
        confirmed = client.post(
            f"/v1/smtp-accounts/{account_id}/confirm",
            headers=key,
            json={"code": code.group(1).decode()},
        )
        assert confirmed.status_code == 200, confirmed.text

        for n in range(3):  # each lead mailed by the request right after the one that created it
            address = f"fay-{n}-{tag}@lead.example"
            lead = client.post(
                "/v1/leads", headers=key, json={"name": f"Fay {n}", "addresses": [address]}
            )
            assert lead.status_code == 201, lead.text
            mailed = client.post(
                "/v1/messages",
                headers=key,
                json={
                    "lead_ids": [lead.json()["id"]],
                    "subject": f"Welcome {n} {tag}",
                    "text": "Glad to meet you.",
                },
            )
            assert mailed.status_code == 202, mailed.text
            assert mailed.json()["recipients"] == [address]
            path = f"/v1/messages/{mailed.json()['id']}"
            wait_for(
                "the welcome sent",
                lambda: client.get(path, headers=key).json()["state"] == "sent",  # noqa: B023
                timeout=30,
            )
            received = smtp_server.received_with(f"Welcome {n} {tag}".encode())
            assert len(received) == 1 and received[0].rcpt_tos == [address]

        unknown = client.post(
            "/v1/messages", headers=key, json={"lead_ids": [str(uuid.uuid4())], "text": "hi"}
        )
        assert unknown.status_code == 422 and unknown.json()["type"].endswith("/unknown-lead"), (
            unknown.text
        )
