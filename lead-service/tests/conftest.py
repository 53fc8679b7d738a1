"""A migrated lead database and a running lead app (real PostgreSQL and NATS) per test."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from leadline_kit import bus
from leadline_kit.identity import Identity
from leadline_kit.infra import PostgresServer
from leadline_kit.testing.clients import as_caller, make_identity, running_app
from leadline_kit.testing.fixtures import migrated_database
from leadline_lead.config import Settings
from leadline_lead.main import create_app

sys.path.insert(0, str(Path(__file__).parent))
from leadtest import SECRET


@pytest.fixture
async def database_url(postgres: PostgresServer) -> str:
    return await migrated_database(postgres, "leadline_lead")


@pytest.fixture
def settings(database_url: str, nats_url: str) -> Settings:
    # the stream holds every other test's events too: a new consumer starts from now, not the beginning
    return Settings(
        DATABASE_URL=database_url,
        NATS_URL=nats_url,
        identity_secret=SECRET,
        consumer_prefix=f"lead-test-{uuid.uuid4().hex[:10]}",
        consumer_deliver_since=datetime.now(UTC) - timedelta(seconds=1),
    )


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(create_app(settings)) as client:
        yield client


@pytest.fixture
def company() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
def admin(company: uuid.UUID) -> Identity:
    return make_identity("administrator", company)


@pytest.fixture
def caller(service: httpx.AsyncClient) -> Callable[[Identity], httpx.AsyncClient]:
    def make(identity: Identity) -> httpx.AsyncClient:
        return as_caller(service, identity, SECRET)

    return make


@pytest.fixture
def api(caller: Callable[[Identity], httpx.AsyncClient], admin: Identity) -> httpx.AsyncClient:
    return caller(admin)


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc, jetstream = await bus.connect(nats_url, "lead-tests")
    await bus.ensure_stream(jetstream)
    yield jetstream
    await nc.close()
