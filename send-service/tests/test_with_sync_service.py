"""Personal Smart Mail with the real sync service (R12, R21): its SMTP settings, its Sent-folder sync."""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from leadline_kit.identity import Identity
from leadline_kit.infra import DovecotServer, NatsServer, PostgresServer, free_port
from leadline_kit.sealing import KeyRing
from leadline_kit.testing.clients import as_caller, running_app
from leadline_kit.testing.fixtures import migrated_database
from leadline_kit.testing.oauth import FakeOAuthProvider
from leadline_mail.imap import ImapSettings, connect_imap
from leadline_mail.net import parse_allowlist
from leadline_send.models import outgoing_message
from leadline_sync.config import Settings as SyncSettings
from leadline_sync.main import create_app as create_sync_app
from leadline_sync.oauth.apps import seal_client_secret

from .conftest import SECRET, HarnessFactory, SmtpFactory
from .test_personal import add_imap_user


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A NATS of this test's own: the sync service replays the stream from its start, and the
    session's stream holds every other test's events by now."""
    server = NatsServer(tmp_path / "nats", free_port())
    server.start()
    yield server.url
    server.stop()


async def test_personal_mail_through_the_synced_mailbox_and_unknown_settled_by_the_sync(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    quota_service: None,
    dovecot: DovecotServer,
    ca_file: str,
    postgres: PostgresServer,
    nats_url: str,
) -> None:
    app = await send_service(data_timeout_seconds=1.0)
    server = smtp_server(tls="starttls", deliver_to=dovecot)
    address = f"u{uuid.uuid4().hex[:10]}@acme.example"
    add_imap_user(dovecot, address)  # password "imap-pass", for IMAP and SMTP alike
    server.handler.logins[address] = "imap-pass"
    sync = SyncSettings(
        database_url=await migrated_database(postgres, "leadline_sync"),
        nats_url=nats_url,
        identity_secret=SECRET,
        environment="test",
        sync_allow_networks="127.0.0.0/8",
        sync_ca_file=ca_file,
        consumer_prefix=f"sync-send-{uuid.uuid4().hex[:8]}",
        sync_poll_seconds=1.0,
        sync_schedule_interval=0.2,
        sync_lease_seconds=15.0,
        rpc_timeout_seconds=1.0,
    )
    me = Identity(company_id=app.company_id, user_id=app.user_id, role="salesperson")
    lead = await app.add_lead(["lead@example.org"], name="Lead")
    async with running_app(create_sync_app(sync)) as sync_client:
        mail_sync = as_caller(sync_client, me, SECRET)
        connected = await mail_sync.put(
            "/v1/mail-sync",
            json={
                "provider": "custom",
                "address": address,
                "password": "imap-pass",
                "smtp_use": "general",
                "imap": {"host": "127.0.0.1", "port": dovecot.port, "use_ssl": False},
                "smtp": {"host": "127.0.0.1", "port": server.port, "use_ssl": False},
            },
        )
        assert connected.status_code == 200, connected.text
        for _ in range(200):
            if (await mail_sync.get("/v1/mail-sync")).json()["status"] == "enabled":
                break
            await asyncio.sleep(0.1)

        # personal mail goes out through the synced mailbox, From the synced address, copy in Sent
        sent = await app.user.post(
            "/v1/messages",
            json={"lead_ids": [str(lead)], "subject": "Hi", "text": "Shall we talk on Monday?"},
        )
        assert sent.status_code == 202, sent.text
        message = sent.json()
        for _ in range(200):
            done = await app.wait_for(message["id"], {"sent", "failed", "unknown"})
            if done["sent_copy"]:
                break
            await asyncio.sleep(0.05)
        assert done["state"] == "sent" and done["account"].startswith("mailbox:"), done
        assert done["sent_copy"] == "saved to Sent"
        [received] = server.handler.by_message_id(message["message_id"])
        assert (
            received.mail_from == address
            and received.message["From"].addresses[0].addr_spec == address
        )

        # a reply that never comes: unknown; the copy the provider kept turns up in Sent, the sync
        # reports it, and the message is settled to sent without being sent again (R21)
        server.handler.behaviour.mode, server.handler.behaviour.silent_seconds = "silent", 2.0
        lost = (
            await app.user.post(
                "/v1/messages",
                json={"lead_ids": [str(lead)], "subject": "Lost reply", "text": "Did this arrive?"},
            )
        ).json()
        assert (await app.wait_for(lost["id"], {"unknown", "sent", "failed"}))["state"] == "unknown"
        data_commands = server.handler.data_commands
        async with app.db.session() as s:
            raw = await s.scalar(
                select(outgoing_message.c.raw).where(outgoing_message.c.id == uuid.UUID(lost["id"]))
            )
        imap = await connect_imap(
            ImapSettings(
                host="127.0.0.1",
                port=dovecot.tls_port,
                tls="implicit",
                username=address,
                password="imap-pass",
                cafile=ca_file,
                allow_networks=parse_allowlist("127.0.0.0/8"),
            )
        )
        try:
            await imap.append("Sent", raw)
        finally:
            await imap.logout()
        settled = await app.wait_for(lost["id"], {"sent"}, timeout=90)
        assert settled["state"] == "sent" and "Sent folder" in settled["last_error"]
        assert server.handler.data_commands == data_commands


async def test_smart_mail_through_a_mailbox_signed_in_with_google(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    quota_service: None,
    oauth_dovecot: DovecotServer,
    oauth_provider: FakeOAuthProvider,
    ca_file: str,
    postgres: PostgresServer,
    nats_url: str,
) -> None:
    """Issue 22 end to end: sign in with Google (the local authorization server), the sync service connects
    the mailbox, and Smart Mail goes out by SMTP AUTH XOAUTH2 with the access token the sync service renews."""
    app = await send_service()
    server = smtp_server(tls="starttls")
    server.handler.token_owner = oauth_provider.access_token_valid
    address = f"u{uuid.uuid4().hex[:10]}@gmail.example"
    redirect = "https://crm.example/v1/mail-sync/oauth/callback"
    base = SyncSettings(identity_secret=SECRET, environment="test")
    apps = {
        "gmail": {
            "client_id": oauth_provider.client_id,
            "redirect_url": redirect,
            "client_secret_sealed": seal_client_secret(
                KeyRing(base.credential_keys()), "gmail", oauth_provider.client_secret
            ),
            **oauth_provider.endpoints(),
            "imap": {"host": "127.0.0.1", "port": oauth_dovecot.port, "tls": "starttls"},
            "smtp": {"host": "127.0.0.1", "port": server.port, "tls": "starttls"},
        }
    }
    sync = SyncSettings(
        database_url=await migrated_database(postgres, "leadline_sync"),
        nats_url=nats_url,
        identity_secret=SECRET,
        environment="test",
        sync_allow_networks="127.0.0.0/8",
        sync_ca_file=ca_file,
        consumer_prefix=f"sync-send-{uuid.uuid4().hex[:8]}",
        sync_poll_seconds=1.0,
        sync_schedule_interval=0.2,
        sync_lease_seconds=15.0,
        rpc_timeout_seconds=1.0,
        sync_oauth_apps=apps,
    )
    me = Identity(company_id=app.company_id, user_id=app.user_id, role="salesperson")
    lead = await app.add_lead(["lead@example.org"], name="Lead")
    async with running_app(create_sync_app(sync)) as sync_client:
        mail_sync = as_caller(sync_client, me, SECRET)
        started = await mail_sync.post("/v1/mail-sync/oauth/gmail/start")
        assert started.status_code == 200, started.text
        oauth_provider.sign_in(address)
        async with httpx.AsyncClient() as browser:
            consent = await browser.get(started.json()["authorization_url"])
        callback = dict(
            urllib.parse.parse_qsl(urllib.parse.urlsplit(consent.headers["location"]).query)
        )
        done = await mail_sync.get(
            "/v1/mail-sync/oauth/callback", params=callback
        )  # the CRM passes it on
        assert done.status_code == 200 and done.json()["address"] == address, done.text
        for _ in range(200):
            if (await mail_sync.get("/v1/mail-sync")).json()["status"] == "enabled":
                break
            await asyncio.sleep(0.1)

        sent = await app.user.post(
            "/v1/messages",
            json={"lead_ids": [str(lead)], "subject": "Hi", "text": "Shall we talk on Monday?"},
        )
        assert sent.status_code == 202, sent.text
        message = sent.json()
        done_message = await app.wait_for(message["id"], {"sent", "failed", "unknown"})
        assert done_message["state"] == "sent" and done_message["account"].startswith("mailbox:"), (
            done_message
        )
        [received] = server.handler.by_message_id(message["message_id"])
        assert received.mail_from == address
        assert any(b"AUTH XOAUTH2 " in bytes(wire) for wire in server.handler.wire)
        assert all(token not in str(done_message) for token in oauth_provider.issued_tokens())
