"""A folder renumbered by the server (UIDVALIDITY changed) is rescanned at most N times a day, then logged."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from leadline_kit.testing.clients import running_app

SENT_CURSOR = "SELECT uidvalidity FROM sync.folder_cursor WHERE folder = 'sent'"


async def renumber_sent(world, account, subject: str) -> None:  # type: ignore[no-untyped-def]
    """Delete and re-create Sent (Dovecot gives it a new UIDVALIDITY), with one new message to a lead in it."""
    client = await world.imap(account)
    try:
        await client.delete_folder("Sent")
        await client.create_folder("Sent")
        await client.append(
            "Sent",
            world.message(sender=account.address, to=["sam@customer.example"], subject=subject),
        )
    finally:
        await client.logout()


async def test_a_folder_renumbered_too_often_is_not_rescanned_again_that_day(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    await world.append(
        me, "Sent", world.message(sender=me.address, to=["sam@customer.example"], subject="first")
    )
    async with running_app(world.app(sync_max_resets_per_day=1, sync_poll_seconds=1.0)) as service:
        await world.add_lead("sam@customer.example", created_at=datetime(2020, 1, 1, tzinfo=UTC))
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        await world.wait_history(api)
        first = await world.wait_for_sql(SENT_CURSOR)

        # renumbered once: read again (the one rescan allowed today)
        await renumber_sent(world, me, "after the first renumbering")
        second = await world.wait_for_sql(SENT_CURSOR, check=lambda v: v not in (None, first))
        await world.synced(at_least=2)
        errors = (await api.get("/v1/mail-sync/errors")).json()["items"]
        assert [e["kind"] for e in errors] == ["folder_reset"]

        # renumbered again the same day: not rescanned; the error log and the status say so, once
        await renumber_sent(world, me, "after the second renumbering")
        deadline = asyncio.get_running_loop().time() + 20
        while asyncio.get_running_loop().time() < deadline:
            errors = (await api.get("/v1/mail-sync/errors")).json()["items"]
            if errors[0]["kind"] == "folder_reset_limit":
                break
            await asyncio.sleep(0.2)
        refusal = errors[0]
        assert refusal["kind"] == "folder_reset_limit", errors
        assert "sent folder again after 1 rescans within a day" in refusal["message"]
        assert "deleted and re-created" in refusal["fix"]
        body = (await api.get("/v1/mail-sync")).json()
        assert body["status"] == "enabled" and body["status_reason"] == refusal["message"]
        await asyncio.sleep(3)  # several more polls of Sent
        kinds = [e["kind"] for e in (await api.get("/v1/mail-sync/errors")).json()["items"]]
        assert kinds.count("folder_reset_limit") == 1 and kinds.count("folder_reset") == 1
        assert await world.wait_for_sql(SENT_CURSOR) == second, "the cursor was not reset"
        subjects = [e.payload.subject for e in await world.synced(at_least=2)]
        assert sorted(subjects) == ["after the first renumbering", "first"]

        # the next day the folder is read again, and the status reason goes away
        world.clock.advance(timedelta(hours=25))
        events = await world.synced(at_least=3)
        assert "after the second renumbering" in [e.payload.subject for e in events]
        await world.wait_for_sql(
            "SELECT count(*) FROM sync.mailbox WHERE status_reason = ''", check=lambda v: v == 1
        )
        assert (
            await world.sql(
                "SELECT uidvalidity_resets FROM sync.folder_cursor WHERE folder = 'sent'"
            )
        ) == [(1,)]
