"""What reaches the wire (R21, R22): CRLF only, dots doubled, one end of data, body intact, pipelined
when the server offers it, and the end of data never before the record."""

from __future__ import annotations

import asyncio
import base64
import re

import asyncpg
import pytest

from leadline_kit.db import asyncpg_dsn

from .conftest import HarnessFactory, SmtpFactory, has_bare_line_end

TRICKY = "first\n.\nafter a lone dot\n.\r\nafter a dot with CRLF\nbare\rcarriage return\n.leading dot\n..two dots\nend"


def pipelined(server_reads: list[bytes]) -> bool:
    """Whether an envelope and its DATA came in one write."""
    return any(
        b"MAIL FROM:" in read and b"RCPT TO:" in read and b"DATA\r\n" in read
        for read in server_reads
    )


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
async def test_dots_and_line_ends_on_the_wire(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    quota_service: None,
    mailboxes: object,
    pipelining: bool,
) -> None:
    # the operator allows plaintext here so the wire can be read in the clear; TLS is tested elsewhere
    app = await send_service(smtp_allow_plaintext=True)
    server = smtp_server(tls="none", pipelining=pipelining)
    await app.add_account(server, tls="plain", type="customer_service")
    response = await app.user.post(
        "/v1/messages", json={"to": ["lead@example.org"], "subject": "dots", "text": TRICKY}
    )
    assert response.status_code == 202, response.text
    message = response.json()
    assert (await app.wait_for(message["id"], {"sent", "failed", "unknown"}))["state"] == "sent"

    wire = bytes(server.handler.wire[-1])
    assert not has_bare_line_end(wire), "a bare CR or LF reached the server"
    data = wire[wire.index(b"DATA\r\n") + len(b"DATA\r\n") :]
    data = data[: data.index(b"\r\n.\r\n") + len(b"\r\n.\r\n")]
    assert data.count(b"\r\n.\r\n") == 1 and data.endswith(b"\r\n.\r\n")  # exactly one end of data
    assert b"\r\n..\r\nafter a lone dot\r\n..\r\nafter a dot with CRLF" in data
    assert b"\r\n..leading dot\r\n...two dots\r\n" in data
    assert not re.search(rb"\r\n\.[^.]", data[:-5])  # every line starting with a dot was doubled

    [received] = server.handler.by_message_id(message["message_id"])
    body = received.message.get_content().replace("\r\n", "\n")
    expected = TRICKY.replace("\r\n", "\n").replace("\r", "\n") + "\n"
    assert body == expected
    assert pipelined(server.handler.reads) is pipelining


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
async def test_the_end_of_data_waits_for_the_record(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    quota_service: None,
    mailboxes: object,
    send_url: str,
    pipelining: bool,
) -> None:
    """R21: the body may go out while the attempt is recorded, its end-of-data mark may not."""
    app = await send_service(smtp_connections=1)
    server = smtp_server(tls="starttls", pipelining=pipelining)
    await app.add_account(server)
    blocker = await asyncpg.connect(asyncpg_dsn(send_url))
    try:
        # the second message's record goes with the first one's settle, whose mail.sent enters the outbox
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("LOCK TABLE send.outbox IN SHARE MODE")
        response = await app.user.post(
            "/v1/messages/batch",
            json={
                "messages": [
                    {
                        "category": "marketing",
                        "to": [f"lead{n}@example.org"],
                        "subject": f"n{n}",
                        "text": f"marker-{n}",
                    }
                    for n in (1, 2)
                ]
            },
        )
        assert response.status_code == 202, response.text
        first, second = response.json()["items"]
        # a deadline, not 200 looks (4 s): the first message's transaction and the second's envelope come first
        deadline = asyncio.get_running_loop().time() + 30
        while (
            b"marker-2" not in bytes(server.handler.wire[-1])
            and asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # room for an end of data that should not come
        wire = bytes(server.handler.wire[-1])
        assert b"marker-2" in wire, "the body goes out beside the record"
        assert server.handler.by_message_id(first["message_id"])
        assert not server.handler.by_message_id(second["message_id"])
        assert b"\r\n.\r\n" not in wire[wire.index(b"marker-2") :], (
            "the end of data went out unrecorded"
        )
        phase = await blocker.fetchval(
            "SELECT a.phase FROM send.send_attempt AS a JOIN send.outgoing_message AS m "
            "ON m.id = a.message_id WHERE m.message_id = $1",
            second["message_id"],
        )
        assert phase == "connecting"
        await blocking.rollback()
    finally:
        await blocker.close()
    for message in (first, second):
        assert (await app.wait_for(message["id"], {"sent", "failed", "unknown"}))["state"] == "sent"
    assert len(server.handler.by_message_id(second["message_id"])) == 1


async def test_attachments_and_non_ascii_names_arrive_intact(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    await app.add_account(server, type="customer_service", from_name="Zoë Ågren")
    pdf = bytes(range(256)) * 40
    response = await app.user.post(
        "/v1/messages",
        json={
            "to": ["lead@example.org"],
            "cc": ["boss@example.org"],
            "bcc": ["audit@example.org"],
            "subject": "Angebot für Sie — 報價",
            "text": "Grüße\n",
            "html": "<p>Grüße</p>",
            "attachments": [
                {
                    "filename": "Angebot Müller.pdf",
                    "content_type": "application/pdf",
                    "content_base64": base64.b64encode(pdf).decode(),
                }
            ],
        },
    )
    assert response.status_code == 202, response.text
    message = response.json()
    assert (await app.wait_for(message["id"], {"sent", "failed", "unknown"}))["state"] == "sent"
    [received] = server.handler.by_message_id(message["message_id"])
    assert sorted(received.rcpt_tos) == [
        "audit@example.org",
        "boss@example.org",
        "lead@example.org",
    ]
    assert received.data.isascii()  # every non-ASCII name and text travels encoded
    msg = received.message
    assert "Bcc" not in msg and msg["Cc"] == "boss@example.org"
    assert msg["Subject"] == "Angebot für Sie — 報價"
    assert msg["From"].addresses[0].display_name == "Zoë Ågren"
    assert msg.get_body(("plain",)).get_content() == "Grüße\n"
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "Angebot Müller.pdf"
    assert attachment.get_content() == pdf
