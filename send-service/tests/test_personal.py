"""Personal Smart Mail through the sender's synced mailbox, and the copy in its Sent folder (R12, R13)."""

from __future__ import annotations

import asyncio
import uuid

from prometheus_client import REGISTRY
from sqlalchemy import func, select

from leadline_kit.infra import DovecotServer
from leadline_kit.testing.oauth import FakeOAuthProvider
from leadline_mail.imap import ImapSettings, connect_imap
from leadline_mail.net import parse_allowlist
from leadline_proto.requests import MailboxSmtpReply
from leadline_send.models import outgoing_message

from .conftest import (
    SMTP_PASSWORD,
    SMTP_USER,
    HarnessFactory,
    MailboxDirectoryStub,
    SendHarness,
    SmtpFactory,
    SmtpServer,
)


def add_imap_user(dovecot: DovecotServer, user: str) -> None:
    dovecot.add_user(user, "imap-pass")


def new_imap_user(dovecot: DovecotServer) -> str:
    """A Dovecot user of this test's own (password "imap-pass"), its name returned."""
    user = f"u{uuid.uuid4().hex[:8]}"
    add_imap_user(dovecot, user)
    return user


def synced_mailbox(
    server: SmtpServer,
    dovecot: DovecotServer,
    user: str,
    *,
    smtp_use: str = "general",
    provider_saves_sent: bool = False,
) -> MailboxSmtpReply:
    return MailboxSmtpReply(
        found=True,
        mailbox_id=uuid.uuid4(),
        status="enabled",
        address=f"{user}@company.example.com",
        provider="custom",
        smtp_use=smtp_use,
        smtp_host="127.0.0.1",
        smtp_port=server.port,
        smtp_tls="starttls",
        smtp_username=SMTP_USER,
        smtp_password=SMTP_PASSWORD,
        imap_host="127.0.0.1",
        imap_port=dovecot.tls_port,
        imap_tls="implicit",
        imap_username=user,
        imap_password="imap-pass",
        sent_folder="Sent",
        provider_saves_sent=provider_saves_sent,
    )


async def sent_folder_message_ids(dovecot: DovecotServer, user: str, ca_file: str) -> list[str]:
    client = await connect_imap(
        ImapSettings(
            host="127.0.0.1",
            port=dovecot.tls_port,
            tls="implicit",
            username=user,
            password="imap-pass",
            cafile=ca_file,
            allow_networks=parse_allowlist("127.0.0.0/8"),
        )
    )
    try:
        await client.select("Sent")
        fetched = await client.fetch_messages(await client.uids_from(1))
    finally:
        await client.logout()
    ids = []
    for item in fetched:
        for line in item.raw.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                ids.append(line.split(b":", 1)[1].strip().decode())
    return ids


async def personal(app: SendHarness, **fields: object) -> dict[str, object]:
    body: dict[str, object] = {
        "to": ["lead@example.org"],
        "subject": "Quick question",
        "text": "Are you free on Monday?",
    }
    body.update(fields)
    response = await app.user.post("/v1/messages", json=body)
    assert response.status_code == 202, response.text
    return dict(response.json())


async def test_personal_mail_from_the_synced_address_with_a_copy_in_sent(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    quota_service: None,
    mailboxes: MailboxDirectoryStub,
    dovecot: DovecotServer,
    ca_file: str,
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    user = new_imap_user(dovecot)
    reply = synced_mailbox(server, dovecot, user)
    mailboxes.replies[(app.company_id, app.user_id)] = reply

    message = await personal(app)
    done = await app.wait_for(str(message["id"]), {"sent", "failed", "unknown"})
    assert done["state"] == "sent" and done["account"] == f"mailbox:{reply.mailbox_id}"
    [received] = server.handler.by_message_id(str(message["message_id"]))
    assert received.mail_from == reply.address
    assert received.message["From"].addresses[0].addr_spec == reply.address
    for _ in range(100):
        done = await app.wait_for(str(message["id"]), {"sent"})
        if done["sent_copy"]:
            break
    assert done["sent_copy"] == "saved to Sent"
    assert await sent_folder_message_ids(dovecot, user, ca_file) == [message["message_id"]]

    # general SMTP use: marketing mail does not go through the personal mailbox (R13)
    refused = await app.user.post(
        "/v1/messages", json={"category": "marketing", "to": ["lead@example.org"], "text": "sale"}
    )
    assert refused.status_code == 422 and refused.json()["type"].endswith("/no-sending-account")


async def test_a_mailbox_signed_in_with_oauth2_sends_by_xoauth2_and_copies_to_sent_with_the_token(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    quota_service: None,
    mailboxes: MailboxDirectoryStub,
    oauth_dovecot: DovecotServer,
    oauth_provider: FakeOAuthProvider,
    ca_file: str,
) -> None:
    """Issue 22: the sync service's answer carries a live access token and no password."""
    app = await send_service()
    server = smtp_server(tls="starttls")
    address = f"u{uuid.uuid4().hex[:8]}@gmail.example"
    token = oauth_provider.access_token_for(address)
    server.handler.token_owner = {token: address}.get
    reply = synced_mailbox(server, oauth_dovecot, address).model_copy(
        update={
            "address": address,
            "provider": "gmail",
            "smtp_username": address,
            "smtp_password": None,
            "imap_password": None,
            "auth": "oauth2",
            "access_token": token,
        }
    )
    mailboxes.replies[(app.company_id, app.user_id)] = reply

    message = await personal(app)
    done = await app.wait_for(str(message["id"]), {"sent", "failed", "unknown"})
    assert done["state"] == "sent", done
    [received] = server.handler.by_message_id(str(message["message_id"]))
    assert received.mail_from == address
    assert any(b"AUTH XOAUTH2 " in bytes(wire) for wire in server.handler.wire)
    for _ in range(
        200
    ):  # the copy signs in through the authorization server: give it time under load
        done = await app.wait_for(str(message["id"]), {"sent"})
        if done["sent_copy"]:
            break
        await asyncio.sleep(0.1)
    assert done["sent_copy"] == "saved to Sent"
    oauth_dovecot.add_user(address, "imap-pass")  # to look into the folder
    assert await sent_folder_message_ids(oauth_dovecot, address, ca_file) == [message["message_id"]]
    assert token not in str(done)


async def test_marketing_through_the_mailbox_when_smtp_use_is_all_and_gmail_saves_sent_itself(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    quota_service: None,
    mailboxes: MailboxDirectoryStub,
    dovecot: DovecotServer,
    ca_file: str,
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    user = new_imap_user(dovecot)
    reply = synced_mailbox(server, dovecot, user, smtp_use="all", provider_saves_sent=True)
    mailboxes.replies[(app.company_id, app.user_id)] = reply
    message = await personal(app, category="marketing")
    done = await app.wait_for(str(message["id"]), {"sent", "failed", "unknown"})
    assert done["state"] == "sent" and done["account"] == f"mailbox:{reply.mailbox_id}"
    [received] = server.handler.by_message_id(str(message["message_id"]))
    assert received.message["List-Unsubscribe"]
    assert done["sent_copy"] is None
    assert await sent_folder_message_ids(dovecot, user, ca_file) == []


async def test_every_copy_of_a_500_message_run_is_in_sent_exactly_once(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    quota_service: None,
    mailboxes: MailboxDirectoryStub,
    dovecot: DovecotServer,
    ca_file: str,
) -> None:
    """The copies go out beside delivery (several to one APPEND when they wait), each recorded on its message."""
    app = await send_service()
    server = smtp_server(tls="starttls")
    user = new_imap_user(dovecot)
    mailboxes.replies[(app.company_id, app.user_id)] = synced_mailbox(server, dovecot, user)
    appends_before = REGISTRY.get_sample_value("leadline_send_sent_copy_appends_total") or 0.0
    queued: list[dict[str, object]] = []
    for start in range(0, 500, 100):
        response = await app.user.post(
            "/v1/messages/batch",
            json={
                "messages": [
                    {
                        "to": [f"lead{n}@example.org"],
                        "subject": f"Note {n}",
                        "text": "See you soon.",
                    }
                    for n in range(start, start + 100)
                ]
            },
        )
        assert response.status_code == 202, response.text
        queued += response.json()["items"]
    for _ in range(600):
        async with app.db.session() as session:
            notes = dict(
                (
                    await session.execute(
                        select(outgoing_message.c.sent_copy, func.count())
                        .where(
                            outgoing_message.c.company_id == app.company_id,
                            outgoing_message.c.state == "sent",
                        )
                        .group_by(outgoing_message.c.sent_copy)
                    )
                ).all()
            )
        if notes.get("saved to Sent") == 500:
            break
        await asyncio.sleep(0.1)
    assert notes == {"saved to Sent": 500}
    in_sent = await sent_folder_message_ids(dovecot, user, ca_file)
    assert sorted(in_sent) == sorted(
        str(m["message_id"]) for m in queued
    )  # every one, exactly once
    assert len(server.received) == 500
    appends = (
        REGISTRY.get_sample_value("leadline_send_sent_copy_appends_total") or 0.0
    ) - appends_before
    assert 1 <= appends <= 500


async def test_a_copy_the_imap_server_refuses_is_noted_and_the_message_stays_sent(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    quota_service: None,
    mailboxes: MailboxDirectoryStub,
    dovecot: DovecotServer,
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    user = new_imap_user(dovecot)
    reply = synced_mailbox(server, dovecot, user).model_copy(
        update={"imap_password": "changed-at-the-provider"}
    )
    mailboxes.replies[(app.company_id, app.user_id)] = reply
    message = await personal(app)
    # a deadline, not 100 looks (5 s): the copy's TLS connection and refused login come after the delivery
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        done = await app.wait_for(str(message["id"]), {"sent"})
        if done["sent_copy"]:
            break
        await asyncio.sleep(0.05)
    assert done["state"] == "sent" and str(done["sent_copy"]).startswith("not saved:"), done
    assert len(server.handler.by_message_id(str(message["message_id"]))) == 1
