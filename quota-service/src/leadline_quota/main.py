"""The quota service: provider limits, plans and the company mailbox limit (issue 4).

``create_app`` wires the HTTP API, the NATS responders (queue group ``quota``),
the consumer of ``company.updated`` / ``mailbox.disconnected`` and a pruner of
reservations that count in no window any more.  ``clock`` is injectable so
tests can move time; every decision reads it, never the database's ``now()``.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from leadline_kit import rpc
from leadline_kit.service import Runtime, create_service_app
from leadline_quota.batching import ReservationBatcher
from leadline_quota.clock import Clock, QuotaContext, system_clock
from leadline_quota.config import Settings
from leadline_quota.consumers import quota_consumers
from leadline_quota.endpoints import operator_router, router
from leadline_quota.models import outbox
from leadline_quota.plans import service as plans
from leadline_quota.reservations import repository
from leadline_quota.responders import QUEUE_GROUP, QuotaRpc

log = logging.getLogger("leadline.quota")


async def prune_forever(runtime: Runtime, clock: Clock, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            async with runtime.db.session() as session:
                pruned = await repository.prune(session, clock())
                await plans.prune_usage(session, clock())
            if pruned:
                log.info("pruned %d reservations that count in no window", pruned)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pruning reservations failed; retrying at the next interval")


def create_app(settings: Settings | None = None, clock: Clock = system_clock) -> FastAPI:
    settings = settings or Settings()

    async def on_start(runtime: Runtime) -> None:
        quota_rpc = QuotaRpc(runtime.db, clock, ReservationBatcher(runtime.db, clock))
        for responder in quota_rpc.responders():
            subscription = await rpc.subscribe(runtime.nats, responder, QUEUE_GROUP)
            runtime.spawn(
                rpc.respond(subscription, responder, settings.responder_concurrency),
                f"quota-rpc-{responder.subject}",
            )
        runtime.spawn(
            prune_forever(runtime, clock, settings.prune_interval_seconds), "quota-pruner"
        )

    app = create_service_app(
        name="quota",
        settings=settings,
        schema="quota",
        outbox=outbox,
        routers=[router, operator_router],
        consumers=quota_consumers,
        on_start=on_start,
        title="Leadline quota service",
    )
    app.state.runtime.context = QuotaContext(clock)
    return app
