"""The runtime every service shares: database, NATS, outbox relay, consumers, health and metrics.

``create_service_app`` builds a FastAPI app whose lifespan connects to
PostgreSQL and NATS, makes sure the event stream exists, starts the outbox
relay and the service's consumers as background tasks, and stops them on exit.
It also installs problem+json errors, request ids, ``/healthz``, ``/readyz``
(database and NATS reachable) and ``/metrics``.  While the service runs, what
exists at startup is frozen out of the cyclic collector's sight and young
collections are rarer (GC_YOUNG_THRESHOLD).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy import Table
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadline_kit import bus
from leadline_kit.consumer import EventConsumer
from leadline_kit.db import Database
from leadline_kit.errors import install_problem_handlers
from leadline_kit.identity import administrator, declare_roles
from leadline_kit.logs import configure_logging, request_id_var
from leadline_kit.outbox import OutboxRelay, RelayWaker
from leadline_kit.settings import KitSettings

log = logging.getLogger("leadline.service")

ServiceContext = TypeVar("ServiceContext")

HTTP_REQUESTS = Counter(
    "leadline_http_requests_total", "HTTP requests", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "leadline_http_request_seconds", "HTTP request latency", ["service", "route"]
)

# The cyclic collector's first threshold (allocations between young collections) while a service
# runs. With CPython's default of 700, and every object made at startup (modules, the app, pools,
# compiled statements: about 130,000) walked by each full collection, the collector took 16% of the
# CPU of the send service's API process under a batch load (bench/send, measured with gc.callbacks).
GC_YOUNG_THRESHOLD = 20_000


@dataclass
class Runtime:
    """What a running service holds; endpoints reach it as ``request.app.state.runtime``."""

    name: str
    settings: KitSettings
    db: Database
    outbox: Table
    nc: Client | None = None
    js: JetStreamContext | None = None
    # workers: /readyz fails if one ends
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # one-off background work (a warm-up)
    chores: list[asyncio.Task[None]] = field(default_factory=list)
    # the service's own typed context (SyncContext, SendContext, ...): read it with context_of()
    context: object | None = None
    # a waker where the service's other processes relay
    relay: OutboxRelay | RelayWaker | None = None

    def wake_relay(self) -> None:
        """Events were committed to the outbox by this process: its relay (or the others') publishes
        them."""
        if self.relay is not None:
            self.relay.wake()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str, *, lasting: bool = True) -> None:
        """Run ``coro`` in the background until the service stops. A lasting task (a consumer, a
        loop) runs as long as the service: if it ends, ``/readyz`` says so. A chore
        (``lasting=False``, a warm-up) may finish; it is cancelled at stop if it has not."""
        task = asyncio.create_task(_supervised(coro, name), name=name)
        (self.tasks if lasting else self.chores).append(task)

    def context_of(self, kind: type[ServiceContext]) -> ServiceContext:
        """The service's context as its type; a RuntimeError before the service has set it."""
        if not isinstance(self.context, kind):
            raise RuntimeError(f"{self.name}: no {kind.__name__} (the service has not started)")
        return self.context

    @property
    def jetstream(self) -> JetStreamContext:
        assert self.js is not None, "NATS is not connected"
        return self.js

    @property
    def nats(self) -> Client:
        assert self.nc is not None, "NATS is not connected"
        return self.nc


@contextlib.contextmanager
def _collector_for_serving() -> Iterator[None]:
    """What exists once a service has started lives as long as it: out of the collector's sight
    (``gc.freeze``), so that a full collection walks only what requests made; and young collections
    every GC_YOUNG_THRESHOLD allocations.  Both given back on stop, for a process that starts and
    stops services one after another (the tests)."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _supervised(coro: Coroutine[Any, Any, None], name: str) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background task %s stopped with an error", name)
        raise


async def stop_tasks(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel background tasks until they have really stopped.

    Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives just as the awaited
    thing completes (nats-py's ``fetch`` and the outbox relay use it), so one ``cancel()`` is not
    always enough: cancel again until each task is done.
    """
    for task in tasks:
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background task %s had failed: %r", task.get_name(), task.exception())


class RequestContextMiddleware:
    """Request ids (``X-Request-ID``, made up when absent) and HTTP metrics, as plain ASGI."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
                break
        request_id = request_id or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or scope.get("leadline.route", "unmatched")
            HTTP_REQUESTS.labels(self.service, scope["method"], path, str(status)).inc()
            HTTP_LATENCY.labels(self.service, path).observe(time.perf_counter() - started)
            request_id_var.reset(token)


Hook = Callable[[Runtime], Awaitable[None]]
ConsumerFactory = Callable[[Runtime], Sequence[EventConsumer]]


def create_service_app(  # noqa: C901 - 19, older than the limit
    *,
    name: str,
    settings: KitSettings,
    schema: str,
    outbox: Table,
    routers: Sequence[APIRouter],
    consumers: ConsumerFactory | None = None,
    on_start: Hook | None = None,
    on_stop: Hook | None = None,
    use_nats: bool = True,
    title: str | None = None,
    middleware: Sequence[tuple[Any, dict[str, Any]]] = (),
    openapi_url: str | None = "/openapi.json",
    database: Database | None = None,
    readiness: Callable[[Runtime], Awaitable[dict[str, str]]] | None = None,
    metrics_guard: Callable[[Request], None] | None = None,
    administrator_checks: Sequence[Callable[..., Any]] = (administrator,),
) -> FastAPI:
    """``readiness`` adds checks to ``/readyz`` (each "ok" or a reason); ``metrics_guard`` is called
    before ``/metrics`` is served and raises a problem to refuse it (a service reached by the
    public); routes guarded by one of ``administrator_checks`` say so in the OpenAPI document
    (declare_roles)."""
    configure_logging(name, settings.log_level)
    database = database or Database(settings.database_url, schema, settings.db_pool_size)
    runtime = Runtime(name=name, settings=settings, db=database, outbox=outbox)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if use_nats:
            runtime.nc, runtime.js = await bus.connect(settings.nats_url, name)
            await bus.ensure_stream(runtime.js)
            if settings.outbox_relay:
                runtime.relay = OutboxRelay(runtime.db, outbox, runtime.js, service=name)
                runtime.spawn(runtime.relay.run(), f"{name}-outbox-relay")
            else:
                runtime.relay = RelayWaker(runtime.db)
            for consumer in consumers(runtime) if consumers else ():
                runtime.spawn(consumer.run(), f"{name}-consumer-{consumer.durable}")
        if on_start:
            await on_start(runtime)
        try:
            with _collector_for_serving():
                yield
        finally:
            if on_stop:
                await on_stop(runtime)
            await stop_tasks([*runtime.tasks, *runtime.chores])
            if isinstance(runtime.relay, RelayWaker):
                await runtime.relay.close()  # the last commits' notification
            if runtime.nc is not None:
                with contextlib.suppress(Exception):
                    await runtime.nc.close()  # not drain: pull subscriptions would hold it for 30 s
            await runtime.db.dispose()

    app = FastAPI(title=title or f"Leadline {name}", lifespan=lifespan, openapi_url=openapi_url)
    app.state.runtime = runtime
    install_problem_handlers(app)
    for middleware_class, options in middleware:
        app.add_middleware(middleware_class, **options)
    # outermost: ids and metrics for everything
    app.add_middleware(RequestContextMiddleware, service=name)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": name}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(runtime.db.ping(), 2.0)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        if use_nats:
            checks["nats"] = (
                "ok" if runtime.nc is not None and runtime.nc.is_connected else "unreachable"
            )
        if readiness:
            checks.update(await readiness(runtime))
        dead = [t.get_name() for t in runtime.tasks if t.done()]
        if dead:
            checks["workers"] = "stopped: " + ", ".join(dead)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "service": name, "checks": checks},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if metrics_guard is not None:
            metrics_guard(request)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    declare_roles(app, administrator_checks)
    return app
