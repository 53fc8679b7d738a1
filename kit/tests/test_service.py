"""The service runtime: the collector settings while it serves, and what /readyz counts as stopped."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter
from sqlalchemy import MetaData, text

from leadline_kit.db import Database, Session
from leadline_kit.outbox import outbox_table
from leadline_kit.service import GC_YOUNG_THRESHOLD, Runtime, create_service_app
from leadline_kit.settings import KitSettings


class MadeAtStartup:
    """Its instances are tracked by the collector."""


async def test_startup_objects_are_frozen_while_serving_and_given_back_on_stop() -> None:
    before = gc.get_threshold()
    app = create_service_app(
        name="probe",
        settings=KitSettings(),
        schema="probe",
        outbox=outbox_table(MetaData(schema="probe")),
        routers=[],
        use_nats=False,
    )
    startup_object = MadeAtStartup()
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 0
        assert not any(o is startup_object for o in gc.get_objects())  # a full collection skips it
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
    assert any(o is startup_object for o in gc.get_objects())


async def test_readiness_fails_when_a_worker_ends_but_not_when_a_chore_finishes(
    fresh_database: str,
) -> None:
    release_worker = asyncio.Event()

    async def worker() -> None:
        await release_worker.wait()

    async def chore() -> None:
        return None

    async def on_start(runtime: Runtime) -> None:
        runtime.spawn(worker(), "probe-worker")
        runtime.spawn(chore(), "probe-warm-up", lasting=False)

    app = create_service_app(
        name="probe",
        settings=KitSettings(database_url=fresh_database),
        schema="probe",
        outbox=outbox_table(MetaData(schema="probe")),
        routers=[],
        use_nats=False,
        on_start=on_start,
    )
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://probe"
        ) as client:
            runtime: Runtime = app.state.runtime
            await asyncio.wait(runtime.chores, timeout=5)
            assert all(task.done() for task in runtime.chores)
            ready = await client.get("/readyz")
            assert ready.status_code == 200, (
                ready.text
            )  # a finished warm-up is not a stopped worker
            release_worker.set()
            await asyncio.wait(runtime.tasks, timeout=5)
            stopped = await client.get("/readyz")
            assert stopped.status_code == 503
            assert stopped.json()["checks"]["workers"] == "stopped: probe-worker"


async def test_a_request_that_finds_every_database_connection_in_use_gets_503_not_500(
    fresh_database: str,
) -> None:
    router = APIRouter()

    @router.get("/probe")
    async def probe(session: Session) -> dict[str, int]:
        return {"one": (await session.execute(text("SELECT 1"))).scalar_one()}

    database = Database(fresh_database, "public", pool_size=1, pool_timeout=0.2)  # 1 + 1 overflow
    async with _serving(router, database) as client:
        assert (await client.get("/probe")).json() == {"one": 1}
        async with database.engine.connect(), database.engine.connect():  # the pool's two, held
            busy = await client.get("/probe")
        assert busy.status_code == 503, busy.text
        assert busy.headers["content-type"] == "application/problem+json"
        assert busy.headers["retry-after"] == "5"
        assert busy.json()["type"].endswith("/busy")
        assert (await client.get("/probe")).json() == {"one": 1}  # free again: served


async def test_a_plain_sql_request_that_finds_every_connection_in_use_gets_503_too(
    fresh_database: str,
) -> None:
    router = APIRouter()
    database = Database(fresh_database, "public", pool_size=1, pool_timeout=0.2)

    @router.get("/probe")
    async def probe() -> dict[str, int]:
        async with database.plain() as conn:
            return {"one": await conn.fetchval("SELECT 1")}

    async with _serving(router, database) as client:
        assert (await client.get("/probe")).json() == {"one": 1}
        async with database.plain():  # the plain pool's one connection, held
            busy = await client.get("/probe")
        assert busy.status_code == 503, busy.text
        assert busy.json()["type"].endswith("/busy")
        assert (await client.get("/probe")).json() == {"one": 1}  # free again: served


async def test_a_405_advertises_the_methods_of_the_most_concrete_path_only() -> None:
    router = APIRouter()

    @router.post("/things/batch")
    async def batch() -> dict[str, str]:
        return {}

    @router.get("/things/{thing_id}")
    async def one(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @router.delete("/things/{thing_id}")
    async def remove(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    app = create_service_app(
        name="probe",
        settings=KitSettings(),
        schema="probe",
        outbox=outbox_table(MetaData(schema="probe")),
        routers=[router],
        use_nats=False,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://probe"
    ) as client:
        on_batch = await client.options("/things/batch")
        assert on_batch.status_code == 405
        assert (
            on_batch.headers["allow"] == "POST"
        )  # not GET: /things/batch is not a thing's id here
        on_one = await client.options("/things/42")
        assert on_one.status_code == 405
        assert on_one.headers["allow"] == "GET, DELETE"


@contextlib.asynccontextmanager
async def _serving(router: APIRouter, database: Database) -> AsyncIterator[httpx.AsyncClient]:
    """A probe service on ``database`` with ``router``, started, and a client of it."""
    app = create_service_app(
        name="probe",
        settings=KitSettings(database_url=database.url),
        schema="public",
        outbox=outbox_table(MetaData(schema="probe")),
        routers=[router],
        use_nats=False,
        database=database,
    )
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://probe"
        ) as client:
            yield client
