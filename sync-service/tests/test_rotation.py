"""More enabled mailboxes than a replica holds: the rest are served in turns, and the API and metrics say so."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from leadline_kit.testing.clients import make_identity, running_app
from leadline_sync.mailbox.states import SyncMode

ROTATION = 8.0
AGE = (
    "SELECT coalesce(max(extract(epoch FROM now() - coalesce(last_synced_at, connected_at))), 0) "
    "FROM sync.mailbox WHERE status = 'enabled'"
)


async def metrics(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await client.get("/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("leadline_sync_")
    }


async def test_a_replica_capped_at_3_serves_10_mailboxes_in_turns(world) -> None:  # type: ignore[no-untyped-def]
    lead = "rita@customer.example"
    accounts = [world.account() for _ in range(10)]
    app = world.app(sync_max_mailboxes=3, sync_rotation_seconds=ROTATION, sync_poll_seconds=2.0)
    async with running_app(app) as service:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        apis = [world.caller(service, account.user) for account in accounts]
        for account, api in zip(accounts, apis, strict=True):
            assert (
                await api.put("/v1/mail-sync", json=world.connect_body(account))
            ).status_code == 200
        await world.wait_for_sql(
            "SELECT count(*) FROM sync.mailbox WHERE last_synced_at IS NOT NULL",
            check=lambda v: v == 10,
            timeout=3 * ROTATION,
        )
        scheduler = app.state.runtime.context.scheduler
        assert (scheduler.capacity.live, scheduler.capacity.rotation_slots) == (2, 1)
        # the first round ran beside the ten connects and did each mailbox's historical sync: slower than the
        # rounds after it, so a mailbox it served first may wait past the period for its second turn; the
        # watch below starts once the slot has served every mailbox again, at its own pace
        await world.wait_for_sql(
            "SELECT count(*) FROM sync.mailbox WHERE last_synced_at > :since",
            {"since": datetime.now(UTC)},
            check=lambda v: v == 10,
            timeout=2 * ROTATION,
        )

        # no enabled mailbox waits longer than the rotation period, while every one gets a new message
        ages: list[float] = []

        async def watch() -> None:
            while True:
                ages.append(float((await world.sql(AGE))[0][0]))
                await asyncio.sleep(0.25)

        watcher = asyncio.create_task(watch())
        for account in accounts:
            await world.append(
                account,
                "INBOX",
                world.message(
                    sender=lead, to=[account.address], subject=f"news for {account.address}"
                ),
            )
        appended = asyncio.get_running_loop().time()
        # a mailbox whose pass had just read INBOX when its message came is served again at most a period
        # later, and that pass takes its own time to fetch and store: a period and a pass's margin (the
        # watch holds every mailbox to the period itself)
        await world.wait_for_sql(
            "SELECT count(*) FROM sync.synced_message",
            check=lambda v: v == 10,
            timeout=1.5 * ROTATION,
        )
        took = asyncio.get_running_loop().time() - appended
        await asyncio.sleep(max(0.0, ROTATION - took))  # keep watching for a whole rotation period
        watcher.cancel()
        events = await world.synced(at_least=10)
        assert sorted(e.payload.subject for e in events) == sorted(
            f"news for {a.address}" for a in accounts
        )
        assert ages and max(ages) <= ROTATION, f"an enabled mailbox waited {max(ages):.1f} s"

        # which are live and which rotate: the API of each user, the administrators' list, the metrics
        bodies = [(await api.get("/v1/mail-sync")).json() for api in apis]
        modes = sorted(b["sync_mode"] for b in bodies)
        assert modes == ["live"] * 2 + ["rotating"] * 8, modes
        live = {b["id"] for b in bodies if b["sync_mode"] == "live"}
        assert live == {str(m) for m in scheduler.held(SyncMode.LIVE)}
        assert all(
            b["last_synced_at"] and b["status"] == "enabled" and b["status_reason"] == ""
            for b in bodies
        )
        admin = world.caller(service, make_identity("administrator", company_id=world.company_id))
        listed = (await admin.get("/v1/mailboxes", params={"status": "enabled"})).json()["items"]
        assert sorted(m["sync_mode"] for m in listed) == modes
        await asyncio.sleep(1.2)  # the report refreshes every second
        seen = await metrics(service)
        assert seen[("leadline_sync_enabled_mailboxes", (("sync_mode", "live"),))] == 2
        assert seen[("leadline_sync_enabled_mailboxes", (("sync_mode", "rotating"),))] == 8
        assert seen[("leadline_sync_mailboxes", (("status", "enabled"),))] == 10
        assert seen[("leadline_sync_overdue_mailboxes", ())] == 0
        assert 0 < seen[("leadline_sync_oldest_sync_age_seconds", ())] <= ROTATION

        # ten rotation periods pass at once: the waiting ones say so, then are served again in one period
        world.clock.advance(timedelta(seconds=10 * ROTATION))
        waiting = [(await api.get("/v1/mail-sync")).json() for api in apis]
        reasons = [b["status_reason"] for b in waiting if b["sync_mode"] == "rotating"]
        assert sum("waiting for a free sync connection" in r for r in reasons) >= 3, reasons
        await asyncio.sleep(1.2)
        seen = await metrics(service)
        assert (
            seen[("leadline_sync_overdue_mailboxes", ())] >= 1
        )  # the rotation slot is catching up meanwhile
        assert seen[("leadline_sync_oldest_sync_age_seconds", ())] >= 9 * ROTATION
        await world.wait_for_sql(
            "SELECT count(*) FROM sync.mailbox WHERE last_synced_at > :since",
            {"since": datetime.now(UTC) + timedelta(seconds=9 * ROTATION)},
            check=lambda v: v == 10,
            timeout=ROTATION,
        )
        assert [(await api.get("/v1/mail-sync")).json()["status_reason"] for api in apis] == [
            ""
        ] * 10
