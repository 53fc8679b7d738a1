"""What a mailbox worker asks of the database: nothing while its mailbox is idle, and a transient error
is waited out and tried again, never a crashed worker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import event, text

from leadline_kit.testing.clients import running_app
from leadline_sync.context import SyncContext


def retries() -> float:
    return (
        REGISTRY.get_sample_value("leadline_sync_database_retries_total", {"error": "TimeoutError"})
        or 0.0
    )


async def test_a_worker_finding_no_database_connection_retries_and_the_mail_arrives(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    lead = "pat@customer.example"
    app = world.app(sync_poll_seconds=60, sync_db_connections=1, sync_db_wait_seconds=0.3)
    async with running_app(app) as service:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        await world.wait_history(api)
        scheduler = app.state.runtime.context_of(SyncContext).scheduler
        assert scheduler is not None
        (worker,) = scheduler.workers.values()
        before = retries()
        # the workers' only connection, taken past their queue: the worker whose turn comes finds none
        async with scheduler.db.engine.connect() as taken:
            await taken.execute(text("SELECT 1"))
            await world.append(
                me, "INBOX", world.message(sender=lead, to=[me.address], subject="while it waited")
            )
            deadline = asyncio.get_running_loop().time() + 15
            while retries() == before:
                assert asyncio.get_running_loop().time() < deadline, (
                    "the worker never met the pool timeout"
                )
                await asyncio.sleep(0.1)
        events = await world.synced(at_least=1, timeout=20)
        assert [e.payload.subject for e in events] == ["while it waited"]
        assert not worker.done(), (
            f"the worker kept running: it retried, it did not crash ({worker})"
        )
        assert list(scheduler.workers.values()) == [worker]
        assert (await api.get("/v1/mail-sync")).json()["status"] == "enabled"


async def test_an_idle_live_mailbox_asks_nothing_of_the_workers_pool(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    # a pass every half second; last_synced_at due at every pass (a quarter of the rotation period)
    app = world.app(sync_poll_seconds=0.5, sync_rotation_seconds=2.0)
    async with running_app(app) as service:
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        await world.wait_history(api)
        await asyncio.sleep(1.0)
        scheduler = app.state.runtime.context_of(SyncContext).scheduler
        assert scheduler is not None
        (worker,) = scheduler.workers.values()
        failures = REGISTRY.get_sample_value("leadline_sync_lease_renewal_failures_total") or 0.0
        checkouts: list[Any] = []

        def checked_out(*args: Any) -> None:
            checkouts.append(args)

        pool = scheduler.db.engine.sync_engine
        event.listen(pool, "checkout", checked_out)
        try:
            synced_before, lease_before = (
                await world.sql("SELECT last_synced_at, lease_expires_at FROM sync.mailbox")
            )[0]
            await asyncio.sleep(4.0)  # eight passes: Sent's STATUS, INBOX's SELECT
            synced_after, lease_after = (
                await world.sql("SELECT last_synced_at, lease_expires_at FROM sync.mailbox")
            )[0]
        finally:
            event.remove(pool, "checkout", checked_out)
        assert checkouts == [], "an idle mailbox's passes take no connection of the workers' pool"
        assert synced_after > synced_before, (
            "last_synced_at still moves: the lease renewals write it"
        )
        assert lease_after > lease_before
        assert (
            REGISTRY.get_sample_value("leadline_sync_lease_renewal_failures_total") or 0.0
        ) == failures
        assert list(scheduler.workers.values()) == [worker] and not worker.done(), (
            "the same worker, never stopped"
        )
