"""What the SMTP server answers decides the message's state (R21, R22): 4xx, 5xx, silence, TLS modes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import nats
import pytest
from sqlalchemy import select

from leadline_proto.events import MailPayload, MailSyncedV1
from leadline_send.delivery import repository
from leadline_send.models import outgoing_message

from .conftest import HarnessFactory, SendHarness, SmtpFactory, SmtpServer


async def send(app: SendHarness, **fields: Any) -> dict[str, Any]:
    body = {
        "category": "marketing",
        "to": [f"lead-{uuid.uuid4().hex[:8]}@example.org"],
        "subject": "Hello",
        "text": "Hello there",
    }
    body.update(fields)
    response = await app.user.post("/v1/messages", json=body)
    assert response.status_code == 202, response.text
    return dict(response.json())


async def test_4xx_is_retried_with_the_same_message_id(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    server = smtp_server(tls="starttls")
    await app.add_account(server)
    server.handler.behaviour.mode = "tempfail_once"
    message = await send(app)
    done = await app.wait_for(message["id"], {"sent", "failed", "unknown"})
    assert done["state"] == "sent" and done["attempts"] == 2, done
    assert len(server.handler.by_message_id(message["message_id"])) == 1


async def test_a_settled_attempt_is_not_settled_again(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    """The settle's WHERE holds the attempt to PHASE_MOVES: a late settle of a done attempt changes nothing."""
    app = await send_service()
    server = smtp_server(tls="implicit")
    await app.add_account(server)
    message = await send(app)
    assert (await app.wait_for(message["id"], {"sent", "failed", "unknown"}))["state"] == "sent"
    message_id = uuid.UUID(message["id"])
    async with app.db.plain() as conn:
        before = await conn.fetchrow(
            "SELECT * FROM send_attempt WHERE message_id = $1 AND number = 1", message_id
        )
        assert before is not None and (before["phase"], before["outcome"]) == ("done", "sent")
        late = ("failed", "interrupted", "late reply", None, "late error")
        await conn.execute(repository.SETTLE, message_id, 1, *late)
        await conn.execute(
            repository.SETTLE_SENT, message_id, 1, "late reply", None, uuid.uuid4(), "x", b"{}"
        )
        after = await conn.fetchrow(
            "SELECT * FROM send_attempt WHERE message_id = $1 AND number = 1", message_id
        )
        assert dict(after or {}) == dict(before)
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE subject = 'x'") == 0
    assert (await app.user.get(f"/v1/messages/{message['id']}")).json()["state"] == "sent"


async def test_5xx_fails_with_the_servers_reply(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    server = smtp_server(tls="implicit")
    await app.add_account(server)
    server.handler.behaviour.mode = "reject"
    message = await send(app)
    done = await app.wait_for(message["id"], {"sent", "failed", "unknown"})
    assert done["state"] == "failed" and done["attempts"] == 1
    assert done["smtp_reply"].startswith("550") and "refused by policy" in done["last_error"]
    assert server.received[1:] == []


PIPELINING = pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])


async def one_slow_retrying_connection(
    send_service: HarnessFactory, smtp_server: SmtpFactory, pipelining: bool, **account: Any
) -> tuple[SendHarness, SmtpServer]:
    """One worker, and a deferred message stays deferred for the test's length."""
    app = await send_service(smtp_connections=1, retry_base_seconds=60.0, retry_max_seconds=60.0)
    server = smtp_server(tls="starttls", pipelining=pipelining)
    await app.add_account(server, **account)
    return app, server


@PIPELINING
async def test_refused_recipients_decide_by_their_replies_and_the_session_goes_on(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    quota_service: None,
    mailboxes: object,
    pipelining: bool,
) -> None:
    # personal mail of a user without a synced mailbox: more than one recipient per message
    app, server = await one_slow_retrying_connection(
        send_service, smtp_server, pipelining, type="customer_service"
    )
    some = await send(
        app, category="personal", to=["lead@example.org", "nobody@example.org", "gone@example.org"]
    )
    done = await app.wait_for(some["id"], {"sent", "failed", "unknown"})
    assert (
        done["state"] == "sent"
        and "nobody@example.org: 550 5.1.1 No such user" in done["last_error"]
    ), done
    assert (
        "gone@example.org: 550 5.1.1 The account does not exist.\n5.1.1 Check the address."
        in done["last_error"]
    )
    assert [r.rcpt_tos for r in server.handler.by_message_id(some["message_id"])] == [
        ["lead@example.org"]
    ]

    none = await send(app, category="personal", to=["nobody@example.org"])
    done = await app.wait_for(none["id"], {"sent", "failed", "unknown"})
    assert done["state"] == "failed" and done["attempts"] == 1, done
    assert (
        done["last_error"]
        == "every recipient was refused: nobody@example.org: 550 5.1.1 No such user"
    )

    later = await send(app, category="personal", to=["busy@example.org", "nobody@example.org"])
    done = await app.wait_for(later["id"], {"deferred"})
    assert done["state"] == "deferred" and "450 4.2.1 Mailbox busy" in done["last_error"], done

    sessions = len(server.handler.wire)
    after = await send(app, category="personal")
    assert (await app.wait_for(after["id"], {"sent", "failed", "unknown"}))["state"] == "sent"
    assert len(server.handler.wire) == sessions, (
        "a refused envelope is reset, not a reason for a new session"
    )
    assert (
        server.handler.by_message_id(none["message_id"])
        == server.handler.by_message_id(later["message_id"])
        == []
    )


@PIPELINING
async def test_a_refused_sender_fails_on_5xx_and_waits_on_4xx(
    send_service: HarnessFactory,
    smtp_server: SmtpFactory,
    quota_service: None,
    mailboxes: object,
    pipelining: bool,
) -> None:
    app, server = await one_slow_retrying_connection(send_service, smtp_server, pipelining)
    server.handler.behaviour.sender_reply = "553 5.7.1 Sender address rejected"
    refused = await send(app)
    done = await app.wait_for(refused["id"], {"sent", "failed", "unknown"})
    assert (
        done["state"] == "failed" and done["smtp_reply"] == "553 5.7.1 Sender address rejected"
    ), done
    server.handler.behaviour.sender_reply = "451 4.7.1 Try again later"
    later = await send(app)
    done = await app.wait_for(later["id"], {"deferred"})
    assert done["state"] == "deferred" and done["smtp_reply"] == "451 4.7.1 Try again later", done
    assert server.handler.data_commands == 1  # the test email's
    server.handler.behaviour.sender_reply = None
    after = await send(app)
    assert (await app.wait_for(after["id"], {"sent", "failed", "unknown"}))["state"] == "sent"


async def test_no_reply_after_data_is_unknown_never_resent_settled_by_sync(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service(data_timeout_seconds=1.0)
    server = smtp_server(tls="starttls", silent_seconds=2.5)
    await app.add_account(server)
    server.handler.behaviour.mode = "silent"
    message = await send(app)
    done = await app.wait_for(message["id"], {"sent", "failed", "unknown"})
    assert done["state"] == "unknown", done
    assert "may hold it" in done["last_error"]
    server.handler.behaviour.mode = "accept"
    await app.wait_for(message["id"], {"sent"}, timeout=2.0)  # nothing moves it by itself
    data_commands = server.handler.data_commands
    assert (await app.user.get(f"/v1/messages/{message['id']}")).json()["state"] == "unknown"
    assert server.handler.data_commands == data_commands

    # the sync finds it in the Sent folder: settled to sent, without sending again (R21); the sightings
    # of a fetched batch are applied together, and one from the Inbox or of another message settles nothing
    nc = await nats.connect(app.nats_url)
    sent_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    sightings: list[tuple[Literal["inbox", "sent"], str, datetime]] = [
        ("inbox", message["message_id"], datetime(2026, 1, 1, tzinfo=UTC)),
        ("sent", "<other@x.example.com>", datetime(2026, 1, 1, tzinfo=UTC)),
        ("sent", message["message_id"], sent_at),
    ]
    for folder, message_id, seen_at in sightings:
        event = MailSyncedV1(
            company_id=app.company_id,
            payload=MailPayload(
                message_id=message_id,
                folder=folder,
                direction="outbound",
                from_address="news@x.example.com",
                sent_at=seen_at,
            ),
        )
        await nc.jetstream().publish(
            event.subject,
            event.model_dump_json().encode(),
            headers={"Nats-Msg-Id": str(event.event_id)},
        )
    await nc.close()
    settled = await app.wait_for(message["id"], {"sent"})
    assert settled["state"] == "sent" and datetime.fromisoformat(settled["sent_at"]) == sent_at
    assert server.handler.data_commands == data_commands


async def test_resend_on_purpose_keeps_the_message_id(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service(data_timeout_seconds=1.0)
    server = smtp_server(tls="starttls", silent_seconds=2.0)
    await app.add_account(server)
    server.handler.behaviour.mode = "silent"
    message = await send(app)
    assert (await app.wait_for(message["id"], {"unknown"}))["state"] == "unknown"
    server.handler.behaviour.mode = "accept"
    data_commands = server.handler.data_commands
    sent_twice = await app.user.post(f"/v1/messages/{message['id']}/resend")
    assert sent_twice.status_code == 202 and sent_twice.json()["state"] == "queued"
    done = await app.wait_for(message["id"], {"sent", "failed", "unknown"})
    assert done["state"] == "sent" and done["attempts"] == 2
    # one more DATA, on purpose, with the same Message-ID
    assert server.handler.data_commands == data_commands + 1
    assert len(server.handler.by_message_id(message["message_id"])) == 1
    again = await app.user.post(f"/v1/messages/{message['id']}/resend")
    assert again.status_code == 409 and again.json()["type"].endswith("/not-resendable")


async def test_starttls_required_gives_a_server_without_it_no_auth(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service(max_attempts=2)
    good = smtp_server(tls="starttls")
    account = await app.add_account(good)
    plain = smtp_server(tls="none")
    # the account now points to a server that offers no STARTTLS (as after a downgrade attack)
    moved = await app.admin.patch(f"/v1/smtp-accounts/{account['id']}", json={"port": plain.port})
    assert moved.status_code == 200 and moved.json()["confirmed"] is False
    tested = await app.admin.post(
        f"/v1/smtp-accounts/{account['id']}/test-email", json={"to": "admin@company.example.com"}
    )
    assert tested.status_code == 422 and "STARTTLS" in tested.json()["detail"]
    wire = b"".join(bytes(w) for w in plain.handler.wire)
    assert b"EHLO" in wire and b"AUTH" not in wire and b"MAIL FROM" not in wire
    assert plain.handler.auth_attempts == 0 and plain.received == []


async def test_plaintext_needs_the_operator_setting(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    refused = await app.admin.post(
        "/v1/smtp-accounts",
        json={
            "name": "plain",
            "host": "127.0.0.1",
            "port": 2525,
            "tls": "plain",
            "from_email": "a@example.com",
        },
    )
    assert refused.status_code == 422 and refused.json()["type"].endswith("/plaintext-not-allowed")


async def test_self_signed_certificate_by_pinned_fingerprint(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service()
    server = smtp_server(tls="implicit", self_signed=True)
    unpinned = await app.admin.post(
        "/v1/smtp-accounts",
        json={
            "name": "self-signed",
            "host": "127.0.0.1",
            "port": server.port,
            "tls": "implicit",
            "username": "x",
            "password": "y",
            "from_email": "a@example.com",
        },
    )
    assert unpinned.status_code == 201
    tested = await app.admin.post(
        f"/v1/smtp-accounts/{unpinned.json()['id']}/test-email",
        json={"to": "admin@company.example.com"},
    )
    assert tested.status_code == 422 and "certificate" in tested.json()["detail"]
    assert server.handler.auth_attempts == 0
    await app.add_account(server)  # with the pin: confirmed through the test email
    message = await send(app)
    assert (await app.wait_for(message["id"], {"sent", "failed", "unknown"}))["state"] == "sent"


async def test_connections_are_reused_and_renewed_after_the_recipient_limit(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service(smtp_connections=1, recipients_per_connection=4)
    server = smtp_server(tls="starttls")
    await app.add_account(
        server, type="customer_service"
    )  # personal mail of a user without a synced mailbox
    sessions_before = len(server.handler.wire)
    messages = [
        await send(app, category="personal", to=["a@example.org", "b@example.org"])
        for _ in range(4)
    ]
    for m in messages:
        assert (await app.wait_for(m["id"], {"sent", "failed", "unknown"}))["state"] == "sent"
    # 4 messages of 2 recipients, at most 4 recipients per connection: 2 sessions, not 4
    assert len(server.handler.wire) - sessions_before == 2


async def test_graceful_stop_finishes_the_message_in_hand_and_gives_back_the_rest(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service(smtp_connections=1)
    server = smtp_server(tls="starttls")
    await app.add_account(server)
    server.handler.behaviour.mode, server.handler.behaviour.silent_seconds = "slow", 0.5
    messages = [await send(app) for _ in range(4)]
    while server.handler.data_commands < 2:  # the test email, then the first message is in DATA
        await asyncio.sleep(0.02)
    await app.stop()
    async with app.db.session() as s:
        states = dict(
            (await s.execute(select(outgoing_message.c.id, outgoing_message.c.state))).all()
        )
    assert states[uuid.UUID(messages[0]["id"])] == "sent"
    assert sorted(states.values()) == ["queued", "queued", "queued", "sent"]
    async with app.db.session() as s:
        attempts = (await s.execute(select(outgoing_message.c.attempts))).scalars().all()
    assert sorted(attempts) == [0, 0, 0, 1]


async def test_a_kept_session_the_server_closed_is_replaced_without_spending_a_retry(
    send_service: HarnessFactory, smtp_server: SmtpFactory, quota_service: None, mailboxes: object
) -> None:
    app = await send_service(smtp_connections=1)
    server = smtp_server(tls="starttls", idle_timeout=0.5)
    await app.add_account(server)
    first = await send(app)
    assert (await app.wait_for(first["id"], {"sent", "failed", "unknown"}))["state"] == "sent"
    # the server drops the idle session we kept (0.5 s on): a sleep could end before it did, and the second
    # message then went over the kept session
    sessions = len(server.handler.wire)
    deadline = asyncio.get_running_loop().time() + 30
    while len(server.handler.ended) < sessions and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert len(server.handler.ended) == sessions, "the server kept the idle session"
    second = await send(app)
    done = await app.wait_for(second["id"], {"sent", "failed", "unknown"})
    assert done["state"] == "sent" and done["attempts"] == 1, done
    assert len(server.handler.wire) == sessions + 1, "the second message went over a new session"
