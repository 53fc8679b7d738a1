"""Bad input is refused at the API (R23): 4xx problem+json, nothing queued, no SMTP connection."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from .conftest import HarnessFactory, SmtpFactory

BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("CRLF in subject", {"subject": "Hi\r\nBcc: evil@example.net"}, 422, "header-injection"),
    ("LF in subject", {"subject": "Hi\nBcc: evil@example.net"}, 422, "header-injection"),
    ("NUL in subject", {"subject": "Hi\x00there"}, 422, "header-injection"),
    (
        "encoded newline",
        {"subject": "=?UTF-8?Q?=0A?=Bcc: evil@example.net"},
        422,
        "header-injection",
    ),
    ("encoded CR base64", {"subject": "=?utf-8?b?eA0KQmNjOiBh?="}, 422, "header-injection"),
    # the encoded word's own charset decodes it: UTF-7's "+AA0ACg-" is CR LF
    (
        "UTF-7 encoded CRLF",
        {"subject": "=?UTF-7?Q?+AA0ACg-Bcc:_evil@example.net?="},
        422,
        "header-injection",
    ),
    (
        "UTF-7 encoded CRLF base64",
        {"subject": "=?utf-7?b?K0FBMEFDZy1CY2M6IGV2aWw=?="},
        422,
        "header-injection",
    ),
    ("unknown charset", {"subject": "=?x-no-such-charset?q?hi?="}, 422, "header-injection"),
    ("U+2028 in subject", {"subject": "Hi\u2028Bcc: evil@example.net"}, 422, "header-injection"),
    ("U+2029 in subject", {"subject": "Hi\u2029there"}, 422, "header-injection"),
    ("U+0085 in subject", {"subject": "Hi\x85there"}, 422, "header-injection"),
    ("U+2028 encoded", {"subject": "=?utf-8?q?a=E2=80=A8b?="}, 422, "header-injection"),
    (
        "CRLF in address",
        {"to": ["a@example.org\r\nBcc: evil@example.net"]},
        422,
        "header-injection",
    ),
    ("NUL in cc", {"cc": ["b@example.org\x00"]}, 422, "header-injection"),
    ("LF in bcc", {"bcc": ["b@example.org\nx"]}, 422, "header-injection"),
    ("invalid address", {"to": ["not-an-address"]}, 422, "invalid-address"),
    ("non-ASCII local part", {"to": ["zoë@example.org"]}, 422, "unsupported-address"),
    ("two at signs", {"to": ["alice@example.org@evil.example"]}, 422, "invalid-address"),
    ("display name smuggled", {"to": ["Eve <eve@example.org>"]}, 422, "invalid-address"),
    (
        "CRLF in attachment name",
        {"attachments": [{"filename": "a\r\n.pdf", "content_base64": "QQ=="}]},
        422,
        "header-injection",
    ),
    ("NUL in body", {"text": "a\x00b"}, 422, "invalid-body"),
    ("unknown lead", {"to": [], "lead_ids": [str(uuid.uuid4())]}, 422, "unknown-lead"),
    (
        "too many recipients",
        {"to": [f"r{n}@example.org" for n in range(101)]},
        422,
        "too-many-recipients",
    ),
    ("over the size limit", {"text": "x" * 40_000}, 413, "message-too-large"),
    ("no recipient", {"to": []}, 422, "no-recipients"),
    (
        "marketing to two",
        {"category": "marketing", "to": ["a@example.org", "b@example.org"]},
        422,
        "marketing-one-recipient",
    ),
    ("unknown field", {"reply_to_hack": "x"}, 422, "validation-error"),
]


@pytest.mark.parametrize(("case", "fields", "status", "slug"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_is_refused_before_anything_happens(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    quota_service: None,
    mailboxes: object,
    case: str,
    fields: dict[str, Any],
    status: int,
    slug: str,
) -> None:
    app = await send_service(max_message_bytes=30_000)
    server = smtp_server(tls="starttls")
    await app.add_account(server, type="customer_service")
    await app.add_account(server, type="campaigns")
    sessions = len(server.handler.wire)
    body: dict[str, Any] = {"to": ["lead@example.org"], "subject": "Hello", "text": "Hi"}
    body.update(fields)
    response = await app.user.post("/v1/messages", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/" + slug)
    listed = await app.user.get("/v1/messages")
    assert listed.json()["items"] == []
    assert len(server.handler.wire) == sessions


ACCOUNT_BAD: list[tuple[str, dict[str, Any]]] = [
    ("U+2028 in from name", {"from_name": "News\u2028Bcc: evil@example.net"}),
    ("U+2029 in name", {"name": "a\u2029b"}),
    ("U+0085 in from name", {"from_name": "News\x85"}),
    ("max_per_month past an integer", {"max_per_month": 2**31}),
    ("max_per_month far past", {"max_per_month": 10**30}),
    ("display_order past an integer", {"display_order": 2**31}),
    ("display_order below an integer", {"display_order": -(2**31) - 1}),
    (
        "a comma in the unsubscribe URL",
        {"unsubscribe_url": "https://x.example/u>, <https://evil.example/"},
    ),
    ("an unsubscribe mailto without an address", {"unsubscribe_url": "mailto:nobody"}),
]


@pytest.mark.parametrize(("case", "fields"), ACCOUNT_BAD, ids=[b[0] for b in ACCOUNT_BAD])
async def test_bad_smtp_account_fields_are_4xx(
    send_service: HarnessFactory, case: str, fields: dict[str, Any]
) -> None:
    app = await send_service()
    body = {
        "name": "campaigns",
        "host": "127.0.0.1",
        "port": 2525,
        "from_email": "news@company.example.com",
        **fields,
    }
    created = await app.admin.post("/v1/smtp-accounts", json=body)
    assert created.status_code == 422, created.text
    assert created.headers["content-type"] == "application/problem+json"
    good = await app.admin.post(
        "/v1/smtp-accounts",
        json={**{k: v for k, v in body.items() if k not in fields}, "name": "ok"},
    )
    assert good.status_code == 201, good.text
    patched = await app.admin.patch(f"/v1/smtp-accounts/{good.json()['id']}", json=fields)
    assert patched.status_code == 422, patched.text
    assert (await app.admin.get("/v1/smtp-accounts")).json()[0]["name"] == "ok"


async def test_a_test_email_to_a_line_separator_is_422(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    account = await app.add_account(server)
    sessions = len(server.handler.wire)
    for to in (
        "admin@company.example.com\u2028Bcc: evil@example.net",
        "a\u2029@company.example.com",
        "admin@company.example.com\x85",
    ):
        tested = await app.admin.post(
            f"/v1/smtp-accounts/{account['id']}/test-email", json={"to": to}
        )
        assert tested.status_code == 422 and tested.json()["type"].endswith("/header-injection"), (
            tested.text
        )
    assert len(server.handler.wire) == sessions
    cleared = await app.admin.patch(f"/v1/smtp-accounts/{account['id']}", json={"from_name": None})
    assert cleared.status_code == 200 and cleared.json()["from_name"] == "", cleared.text


async def test_calls_without_the_gateway_signature_are_refused(
    send_service: HarnessFactory,
) -> None:
    app = await send_service()
    response = await app.client.post("/v1/messages", json={"to": ["a@example.org"], "text": "x"})
    assert response.status_code == 401
