"""The sync service app: Mail Sync API, the sync scheduler and workers, NATS responders,
consumers."""

from __future__ import annotations

import logging
import os
import socket
import uuid

from fastapi import FastAPI

from leadline_kit import rpc
from leadline_kit.sealing import KeyRing
from leadline_kit.service import Runtime, create_service_app
from leadline_sync.config import Settings
from leadline_sync.context import Clock, SyncContext, system_clock
from leadline_sync.credentials import CredentialCipher
from leadline_sync.domain_check import DnsTxtResolver, TxtResolver
from leadline_sync.mailbox.consumers import consumers
from leadline_sync.mailbox.endpoints import router
from leadline_sync.mailbox.smtp_settings import mailbox_smtp_responder
from leadline_sync.models import outbox
from leadline_sync.oauth.apps import resolve_apps
from leadline_sync.oauth.endpoints import router as oauth_router
from leadline_sync.oauth.tokens import AccessTokens, TokenEndpoint
from leadline_sync.sync.capacity import raise_open_files_limit, replica_capacity
from leadline_sync.sync.pacing import LoginGate
from leadline_sync.sync.parse_worker import map_large_allocations
from leadline_sync.sync.parsing import MessageParser
from leadline_sync.sync.scheduler import SyncScheduler

log = logging.getLogger("leadline.sync")

QUEUE_GROUP = "leadline-sync"
CHORE_SECONDS = 10.0  # how long a stopping service waits for the chores of answered requests


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    resolver: TxtResolver | None = None,
) -> FastAPI:
    """``clock`` and ``resolver`` are injectable for tests (R8's 48 hours; R18's DNS answers)."""
    settings = settings or Settings()
    map_large_allocations()

    async def on_start(runtime: Runtime) -> None:
        context = runtime.context_of(SyncContext)
        context.nats = runtime.nats
        responder = mailbox_smtp_responder(context)
        subscription = await rpc.subscribe(runtime.nats, responder, QUEUE_GROUP)
        runtime.spawn(rpc.respond(subscription, responder), "sync-rpc-mailbox-smtp")
        capacity = replica_capacity(settings, raise_open_files_limit())
        log.info("replica %s holds up to %s", context.replica, capacity.describe())
        scheduler = SyncScheduler(context, capacity)
        context.scheduler = scheduler
        runtime.spawn(scheduler.run(), "sync-scheduler")

    async def on_stop(runtime: Runtime) -> None:
        context = runtime.context_of(SyncContext)
        await context.finish_chores(CHORE_SECONDS)
        if context.scheduler is not None:
            await context.scheduler.stop()  # its leases given back, the parser processes stopped
        await context.endpoint.close()

    app = create_service_app(
        name="sync",
        settings=settings,
        schema="sync",
        outbox=outbox,
        routers=[router, oauth_router],
        consumers=consumers,
        on_start=on_start,
        on_stop=on_stop,
        title="Leadline sync service",
    )
    runtime: Runtime = app.state.runtime
    cipher = CredentialCipher.from_settings(settings)
    oauth_apps = resolve_apps(settings.sync_oauth_apps, KeyRing(settings.credential_keys()))
    endpoint = TokenEndpoint(settings, clock or system_clock)
    runtime.context = SyncContext(
        settings=settings,
        db=runtime.db,
        cipher=cipher,
        oauth_apps=oauth_apps,
        endpoint=endpoint,
        tokens=AccessTokens(
            settings, runtime.db, cipher, oauth_apps, endpoint, clock or system_clock
        ),
        clock=clock or system_clock,
        resolver=resolver or DnsTxtResolver(),
        parser=MessageParser(settings.parse_processes()),
        logins=LoginGate(
            settings.sync_max_logins,
            settings.sync_retry_base_seconds,
            settings.sync_retry_max_seconds,
        ),
        replica=settings.sync_replica
        or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
    )
    return app
