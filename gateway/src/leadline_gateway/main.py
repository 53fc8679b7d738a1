"""The API gateway: companies, users and API keys; authentication, routing, one OpenAPI document."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from leadline_gateway import models
from leadline_gateway.accounts.endpoints import administrator, bootstrap_router, operator_router
from leadline_gateway.accounts.endpoints import router as accounts_router
from leadline_gateway.auth import ApiKeyAuthenticator, bearer_matches
from leadline_gateway.config import Settings
from leadline_gateway.context import GatewayContext
from leadline_gateway.mailer import SystemMailer
from leadline_gateway.openapi import merged_openapi
from leadline_gateway.problems import InvalidMetricsToken
from leadline_gateway.proxy import GatewayProxy
from leadline_gateway.ratelimit import RateLimiter
from leadline_kit.db import Database
from leadline_kit.errors import NotFound
from leadline_kit.service import Runtime, create_service_app


def create_app(given: Settings | None = None) -> FastAPI:
    settings = given or Settings()
    # the proxy needs the database before the app exists; the runtime's Database is the same object
    database = Database(settings.database_url, "gateway", settings.db_pool_size)
    authenticator = ApiKeyAuthenticator(database)
    limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    proxies: list[GatewayProxy] = []

    class BoundProxy(GatewayProxy):
        def __init__(self, app: Any) -> None:
            super().__init__(app, settings, authenticator, limiter)
            proxies.append(self)

    async def on_stop(runtime: Runtime) -> None:
        for proxy in proxies:
            await proxy.close()

    async def services_ready(runtime: Runtime) -> dict[str, str]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:

            async def probe(name: str, base: str) -> tuple[str, str]:
                try:
                    async with session.get(base + "/readyz") as response:
                        return (
                            f"{name}-service",
                            "ok" if response.status == 200 else f"not ready ({response.status})",
                        )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    return f"{name}-service", f"unreachable: {type(exc).__name__}"

            return dict(
                await asyncio.gather(*(probe(n, u) for n, u in settings.services().items()))
            )

    def metrics_guard(request: Request) -> None:
        """The gateway faces the public: its metrics go only to whoever holds the operator's metrics
        token."""
        if settings.metrics_token is None:
            raise NotFound("not found")
        if not bearer_matches(
            request.headers.get("authorization"), settings.metrics_token.get_secret_value()
        ):
            raise InvalidMetricsToken(
                "the gateway's metrics need the metrics token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = create_service_app(
        name="gateway",
        settings=settings,
        schema="gateway",
        outbox=models.outbox,
        routers=[bootstrap_router, operator_router, accounts_router],
        on_stop=on_stop,
        middleware=[(BoundProxy, {})],
        openapi_url=None,
        title="Leadline API",
        database=database,
        readiness=services_ready,
        metrics_guard=metrics_guard,
        administrator_checks=[administrator],
    )
    app.state.runtime.context = GatewayContext(authenticator, SystemMailer(settings))

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        async with aiohttp.ClientSession() as session:
            document, missing = await merged_openapi(
                app, session, settings.services(), [prefix for prefix, _ in settings.routes()]
            )
        headers = {"X-Leadline-Missing-Services": ",".join(missing)} if missing else {}
        return JSONResponse(document, headers=headers)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Leadline API")

    return app
