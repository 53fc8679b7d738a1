"""What the endpoints, the RPC responders and the sync workers of one process share."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from nats.aio.client import Client

from leadline_kit.db import Database
from leadline_sync.config import Settings
from leadline_sync.credentials import CredentialCipher
from leadline_sync.domain_check import TxtResolver
from leadline_sync.oauth.apps import OAuthApp
from leadline_sync.oauth.tokens import AccessTokens, TokenEndpoint
from leadline_sync.sync.pacing import LoginGate
from leadline_sync.sync.parsing import MessageParser

if TYPE_CHECKING:
    from leadline_sync.sync.scheduler import SyncScheduler

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class SyncContext:
    settings: Settings
    db: Database
    cipher: CredentialCipher
    clock: Clock
    resolver: TxtResolver
    replica: str
    parser: MessageParser
    # provider apps configured for signing in with Gmail / Microsoft
    oauth_apps: dict[str, OAuthApp]
    endpoint: TokenEndpoint
    tokens: AccessTokens
    logins: LoginGate
    nats: Client | None = None
    # set to make this replica's scheduler look for work now (a mailbox was connected or updated)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    scheduler: SyncScheduler | None = None  # this replica's, once the service has started
    chores: set[asyncio.Task[None]] = field(default_factory=set)  # see chore()

    def chore(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` after the request that started it has answered; the service waits for it as
        it stops."""
        task = asyncio.create_task(work, name=name)
        self.chores.add(task)
        task.add_done_callback(self.chores.discard)

    async def finish_chores(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the chores, then cancel what is left."""
        if not self.chores:
            return
        _, pending = await asyncio.wait(set(self.chores), timeout=seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    @property
    def nc(self) -> Client:
        assert self.nats is not None, "NATS is not connected"
        return self.nats


async def sync_context(request: Request) -> SyncContext:
    context: SyncContext = request.app.state.runtime.context_of(SyncContext)
    return context


Context = Annotated[SyncContext, Depends(sync_context)]
