"""Historical and live sync against a real Dovecot: what leaves the service and what never does (R4–R6)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from leadline_kit.testing.clients import running_app


async def test_history_then_idle_publishes_only_lead_mail(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    lead, later_lead = "jane@customer.example", "bob@prospect.example"
    colleague, stranger, blocked = (
        "ann@acme.example",
        "someone@else.example",
        "spam@blocked.example",
    )
    # polling only every minute: mail that arrives within seconds came through IDLE
    async with running_app(world.app(sync_poll_seconds=60)) as service:
        await world.set_company(["acme.example"])
        await world.publish_blocklist("domain", "blocked.example")
        await world.add_lead(
            lead, "Jane.Alias@Customer.example", created_at=datetime(2020, 1, 1, tzinfo=UTC)
        )
        await world.add_lead("spam@blocked.example", created_at=datetime(2020, 1, 1, tzinfo=UTC))
        await world.add_lead(colleague, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        long_ago = datetime(2021, 5, 1, tzinfo=UTC)
        await world.append(
            me,
            "INBOX",
            world.message(sender=lead, to=[me.address], subject="old question", date=long_ago),
            world.message(sender=stranger, to=[me.address], subject="private: not a lead"),
            world.message(sender=blocked, to=[me.address], subject="blocked lead"),
            world.message(sender=colleague, to=[me.address], subject="own domain"),
            world.message(
                sender=later_lead, to=[me.address], subject="before bob was a lead", date=long_ago
            ),
            world.message(
                sender="jane.alias@customer.example",
                to=[me.address],
                cc=[stranger, blocked],
                subject="from the alias",
                attachment=b"%PDF-1.4 offer",
            ),
        )
        await world.append(
            me,
            "Sent",
            world.message(sender=me.address, to=[lead], subject="my answer", date=long_ago),
        )
        client = await world.imap(me)
        await client.create_folder("INBOX/Projects")
        await client.logout()
        await world.append(
            me,
            "INBOX/Projects",
            world.message(sender=lead, to=[me.address], subject="in a subfolder"),
        )

        api = world.caller(service, me.user)
        response = await api.put("/v1/mail-sync", json=world.connect_body(me))
        assert response.status_code == 200, response.text
        body = response.json()
        assert me.password not in response.text
        assert body["sent_folder"] == "Sent"
        await world.wait_status(api, "enabled")
        await world.wait_history(api)
        events = await world.synced(at_least=3)
        subjects = sorted(e.payload.subject for e in events)
        assert subjects == ["from the alias", "my answer", "old question"]
        # the history's first window is INBOX's: the mail a user waits for reaches the timelines first
        assert [e.payload.folder for e in events] == ["inbox", "inbox", "sent"]
        by_subject = {e.payload.subject: e.payload for e in events}
        assert (
            by_subject["my answer"].folder == "sent"
            and by_subject["my answer"].direction == "outbound"
        )
        assert by_subject["old question"].direction == "inbound"
        alias = by_subject["from the alias"]
        assert alias.cc == [stranger], "blocklisted addresses are left out of what is published"
        assert [a.filename for a in alias.attachments] == ["offer.pdf"]

        # a lead created after connect gets mail from its creation on, and live mail arrives by IDLE
        await world.add_lead(later_lead, created_at=world.clock())
        await asyncio.sleep(0.3)
        await world.append(
            me,
            "INBOX",
            world.message(sender=later_lead, to=[me.address], subject="bob writes now"),
            world.message(sender=stranger, to=[me.address], subject="private again"),
        )
        events = await world.synced(at_least=4, timeout=15)
        subjects = sorted(e.payload.subject for e in events)
        assert subjects == ["bob writes now", "from the alias", "my answer", "old question"]
        rows = await world.sql("SELECT count(*) FROM sync.synced_message")
        assert rows[0][0] == 4
        assert len({e.payload.message_id for e in events}) == 4


async def test_uidvalidity_change_rescans_without_duplicates(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    lead = "carol@customer.example"
    first = [
        world.message(
            sender=me.address,
            to=[lead],
            subject=f"sent {i}",
            date=datetime.now(UTC) - timedelta(days=3),
        )
        for i in range(3)
    ]
    await world.append(me, "Sent", *first)
    async with running_app(world.app()) as service:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        await world.wait_history(api)
        assert len(await world.synced(at_least=3)) == 3
        # the server renumbers the folder: delete and recreate it with the same mail and one more
        client = await world.imap(me)
        await client.delete_folder("Sent")
        await client.create_folder("Sent")
        await client.logout()
        await world.append(
            me, "Sent", *first, world.message(sender=me.address, to=[lead], subject="sent 3")
        )
        await world.wait_for_sql(
            "SELECT uidvalidity_resets FROM sync.folder_cursor WHERE folder = 'sent'",
            check=lambda v: v == 1,
        )
        events = await world.synced(at_least=4)
        assert sorted(e.payload.subject for e in events) == ["sent 0", "sent 1", "sent 2", "sent 3"]


async def test_dropped_connection_reconnects_without_an_error(world, dropping_proxy) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    lead = "kim@customer.example"
    async with running_app(world.app(sync_poll_seconds=60)) as service:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        api = world.caller(service, me.user)
        body = world.connect_body(me)
        body["imap"]["port"] = dropping_proxy.port
        assert (await api.put("/v1/mail-sync", json=body)).status_code == 200
        await world.wait_history(api)
        await asyncio.sleep(0.5)
        assert dropping_proxy.cut() >= 1
        await world.append(
            me, "INBOX", world.message(sender=lead, to=[me.address], subject="after the cut")
        )
        events = await world.synced(at_least=1, timeout=15)
        assert [e.payload.subject for e in events] == ["after the cut"]
        assert (await api.get("/v1/mail-sync")).json()["status"] == "enabled"
        assert (await api.get("/v1/mail-sync/errors")).json()["items"] == []
        statuses = [e.payload.status for e in await world.events("mailbox.status_changed")]
        assert "error" not in statuses
