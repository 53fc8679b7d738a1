"""Quota-service test support: a migrated database per test, a movable clock, the app on real NATS."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import httpx
import nats
import pytest
from nats.aio.client import Client

from leadline_kit.db import Database
from leadline_kit.infra import PostgresServer
from leadline_kit.testing.clients import running_app
from leadline_kit.testing.fixtures import migrated_database
from leadline_proto.events import Event, parse_event
from leadline_quota.clock import MovableClock
from leadline_quota.config import Settings
from leadline_quota.main import create_app

SECRET = "quota-test-identity-secret"


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC))


@pytest.fixture
async def quota_url(postgres: PostgresServer) -> str:
    return await migrated_database(postgres, "leadline_quota")


@pytest.fixture
async def db(quota_url: str) -> AsyncIterator[Database]:
    database = Database(quota_url, "quota")
    yield database
    await database.dispose()


@pytest.fixture
def settings(quota_url: str, nats_url: str) -> Settings:
    # a durable of its own per test: the stream is shared by every test of the session
    return Settings(
        database_url=quota_url,
        nats_url=nats_url,
        identity_secret=SECRET,
        consumer_prefix=f"quota-test-{uuid.uuid4().hex[:10]}",
        environment="test",
    )


@pytest.fixture
async def quota_service(
    settings: Settings, clock: MovableClock
) -> AsyncIterator[httpx.AsyncClient]:
    """The quota service running in-process (HTTP client bound to it; its responders are on NATS)."""
    serving = running_app(create_app(settings, clock))
    client = await serving.__aenter__()
    try:
        yield client
    finally:
        try:
            await asyncio.wait_for(serving.__aexit__(None, None, None), 60)
        except TimeoutError:
            for task in asyncio.all_tasks():  # say what would not stop
                task.print_stack(file=sys.stderr)
            raise


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


StreamEvents = Callable[[str, uuid.UUID, int], Awaitable[list[Event]]]


@pytest.fixture
def stream_events(nc: Client) -> StreamEvents:
    """Reads the company's events of one subject from the shared stream, waiting for a count."""

    async def events_of(subject: str, company: uuid.UUID, expected: int) -> list[Event]:
        found: list[Event] = []
        subscription = await nc.jetstream().subscribe(subject, ordered_consumer=True)
        try:
            deadline = asyncio.get_running_loop().time() + 15
            while len(found) < expected and asyncio.get_running_loop().time() < deadline:
                try:
                    msg = await subscription.next_msg(timeout=1)
                except Exception:  # noqa: S112 - a quiet second: keep waiting until the deadline
                    continue
                event = parse_event(msg.data)
                if event.company_id == company:
                    found.append(event)
        finally:
            await subscription.unsubscribe()
        return found

    return events_of
