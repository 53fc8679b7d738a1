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
    ("encoded newline", {"subject": "=?UTF-8?Q?=0A?=Bcc: evil@example.net"}, 422, "header-injection"),
    ("encoded CR base64", {"subject": "=?utf-8?b?eA0KQmNjOiBh?="}, 422, "header-injection"),
    ("CRLF in address", {"to": ["a@example.org\r\nBcc: evil@example.net"]}, 422, "header-injection"),
    ("NUL in cc", {"cc": ["b@example.org\x00"]}, 422, "header-injection"),
    ("LF in bcc", {"bcc": ["b@example.org\nx"]}, 422, "header-injection"),
    ("invalid address", {"to": ["not-an-address"]}, 422, "invalid-address"),
    ("non-ASCII local part", {"to": ["zoë@example.org"]}, 422, "unsupported-address"),
    ("two at signs", {"to": ["alice@example.org@evil.example"]}, 422, "invalid-address"),
    ("display name smuggled", {"to": ["Eve <eve@example.org>"]}, 422, "invalid-address"),
    ("CRLF in attachment name", {"attachments": [{"filename": "a\r\n.pdf", "content_base64": "QQ=="}]}, 422,
     "header-injection"),
    ("NUL in body", {"text": "a\x00b"}, 422, "invalid-body"),
    ("unknown lead", {"to": [], "lead_ids": [str(uuid.uuid4())]}, 422, "unknown-lead"),
    ("too many recipients", {"to": [f"r{n}@example.org" for n in range(101)]}, 422, "too-many-recipients"),
    ("over the size limit", {"text": "x" * 40_000}, 413, "message-too-large"),
    ("no recipient", {"to": []}, 422, "no-recipients"),
    ("marketing to two", {"category": "marketing", "to": ["a@example.org", "b@example.org"]}, 422,
     "marketing-one-recipient"),
    ("unknown field", {"reply_to_hack": "x"}, 422, "validation-error"),
]


@pytest.mark.parametrize(("case", "fields", "status", "slug"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_is_refused_before_anything_happens(
        send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object,
        case: str, fields: dict[str, Any], status: int, slug: str) -> None:
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


async def test_calls_without_the_gateway_signature_are_refused(send_service: HarnessFactory) -> None:
    app = await send_service()
    response = await app.client.post("/v1/messages", json={"to": ["a@example.org"], "text": "x"})
    assert response.status_code == 401
