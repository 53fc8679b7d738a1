"""Live sync against a real Dovecot: new mail in Sent arrives as fast as new mail in INBOX."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from leadline_kit.testing.clients import running_app


async def appended_until_synced(world, me, folder: str, subject: str) -> float:  # type: ignore[no-untyped-def]
    lead = "nora@customer.example"
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw = (
        world.message(sender=me.address, to=[lead], subject=subject)
        if folder == "Sent"
        else world.message(sender=lead, to=[me.address], subject=subject)
    )
    await world.append(me, folder, raw)
    await world.wait_for_sql(
        "SELECT count(*) FROM sync.synced_message m JOIN sync.mailbox b ON b.id = m.mailbox_id "
        "WHERE b.address = :address AND m.folder = :folder",
        {"address": me.address, "folder": folder.lower()},
        check=lambda v: v >= 1,
        timeout=15,
    )
    return loop.time() - started


@pytest.mark.parametrize(
    ("notify", "sent_poll"), [(True, 600.0), (False, 1.0)], ids=["notify", "status-poll"]
)
async def test_new_mail_in_sent_arrives_within_seconds(  # type: ignore[no-untyped-def]
    world, notify: bool, sent_poll: float
) -> None:
    me = world.account()
    # every other check is ten minutes away: with NOTIFY only the server's push explains a quick arrival
    async with running_app(
        world.app(sync_poll_seconds=600, sync_notify=notify, sync_sent_poll_seconds=sent_poll)
    ) as service:
        await world.add_lead("nora@customer.example", created_at=datetime(2020, 1, 1, tzinfo=UTC))
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        await world.wait_history(api)
        await asyncio.sleep(0.5)  # the session is waiting in IDLE
        assert await appended_until_synced(world, me, "Sent", "sent just now") < 5
        assert await appended_until_synced(world, me, "INBOX", "received just now") < 5
        events = await world.synced(at_least=2)
        assert sorted((e.payload.folder, e.payload.subject) for e in events) == [
            ("inbox", "received just now"),
            ("sent", "sent just now"),
        ]


def test_which_folder_is_checked_when() -> None:
    from leadline_sync.sync.live import FolderWatch

    polled = FolderWatch(
        idle_folder="INBOX", pushed=False, idle=True, poll_seconds=60, unpushed_poll_seconds=8
    )
    assert polled.wait_seconds(0) == 0 and polled.due("Sent", set(), 0, "INBOX"), (
        "everything at the start"
    )
    polled.checked("Sent", 0)
    polled.checked("INBOX", 0)
    assert polled.wait_seconds(1) == 7
    assert not polled.due("Sent", set(), 7, "INBOX") and polled.due("Sent", set(), 8, "INBOX")
    assert not polled.due("INBOX", set(), 30, "INBOX"), "IDLE pushes INBOX: only the safety poll"
    assert polled.due("INBOX", {"INBOX"}, 1, "INBOX")
    assert polled.due("INBOX", set(), 1, "Sent"), "INBOX is selected again for IDLE"
    pushed = FolderWatch(
        idle_folder="INBOX", pushed=True, idle=True, poll_seconds=60, unpushed_poll_seconds=8
    )
    pushed.checked("Sent", 0)
    pushed.checked("INBOX", 0)
    assert pushed.wait_seconds(0) == 60 and not pushed.due("Sent", set(), 30, "INBOX")
    assert pushed.due("Sent", {"Sent"}, 1, "INBOX")
    neither = FolderWatch(
        idle_folder="INBOX", pushed=False, idle=False, poll_seconds=60, unpushed_poll_seconds=8
    )
    neither.checked("INBOX", 0)
    assert neither.due("INBOX", set(), 8, "INBOX")
