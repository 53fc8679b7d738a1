"""What reaches the wire (R22): CRLF only, dots doubled, one end of data, body intact."""

from __future__ import annotations

import base64
import re

from .conftest import HarnessFactory, SmtpFactory, has_bare_line_end

TRICKY = "first\n.\nafter a lone dot\n.\r\nafter a dot with CRLF\nbare\rcarriage return\n.leading dot\n..two dots\nend"


async def test_dots_and_line_ends_on_the_wire(send_service: HarnessFactory, smtp_server: SmtpFactory,
                                              quota_service: None, mailboxes: object) -> None:
    # the operator allows plaintext here so the wire can be read in the clear; TLS is tested elsewhere
    app = await send_service(smtp_allow_plaintext=True)
    server = smtp_server(tls="none")
    await app.add_account(server, tls="plain", type="customer_service")
    response = await app.user.post("/v1/messages", json={
        "to": ["lead@example.org"], "subject": "dots", "text": TRICKY})
    assert response.status_code == 202, response.text
    message = response.json()
    assert (await app.wait_for(message["id"], {"sent", "failed", "unknown"}))["state"] == "sent"

    wire = bytes(server.handler.wire[-1])
    assert not has_bare_line_end(wire), "a bare CR or LF reached the server"
    data = wire[wire.index(b"DATA\r\n") + len(b"DATA\r\n"):]
    data = data[:data.index(b"\r\n.\r\n") + len(b"\r\n.\r\n")]
    assert data.count(b"\r\n.\r\n") == 1 and data.endswith(b"\r\n.\r\n")  # exactly one end of data
    assert b"\r\n..\r\nafter a lone dot\r\n..\r\nafter a dot with CRLF" in data
    assert b"\r\n..leading dot\r\n...two dots\r\n" in data
    assert not re.search(rb"\r\n\.[^.]", data[:-5])  # every line starting with a dot was doubled

    [received] = server.handler.by_message_id(message["message_id"])
    body = received.message.get_content().replace("\r\n", "\n")
    expected = TRICKY.replace("\r\n", "\n").replace("\r", "\n") + "\n"
    assert body == expected


async def test_attachments_and_non_ascii_names_arrive_intact(send_service: HarnessFactory, smtp_server: SmtpFactory,
                                                             quota_service: None, mailboxes: object) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    await app.add_account(server, type="customer_service", from_name="Zoë Ågren")
    pdf = bytes(range(256)) * 40
    response = await app.user.post("/v1/messages", json={
        "to": ["lead@example.org"], "cc": ["boss@example.org"], "bcc": ["audit@example.org"],
        "subject": "Angebot für Sie — 報價", "text": "Grüße\n", "html": "<p>Grüße</p>",
        "attachments": [{"filename": "Angebot Müller.pdf", "content_type": "application/pdf",
                         "content_base64": base64.b64encode(pdf).decode()}]})
    assert response.status_code == 202, response.text
    message = response.json()
    assert (await app.wait_for(message["id"], {"sent", "failed", "unknown"}))["state"] == "sent"
    [received] = server.handler.by_message_id(message["message_id"])
    assert sorted(received.rcpt_tos) == ["audit@example.org", "boss@example.org", "lead@example.org"]
    assert received.data.isascii()  # every non-ASCII name and text travels encoded
    msg = received.message
    assert "Bcc" not in msg and msg["Cc"] == "boss@example.org"
    assert msg["Subject"] == "Angebot für Sie — 報價"
    assert msg["From"].addresses[0].display_name == "Zoë Ågren"
    assert msg.get_body(("plain",)).get_content() == "Grüße\n"
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "Angebot Müller.pdf"
    assert attachment.get_content() == pdf
