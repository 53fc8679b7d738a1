"""One OpenAPI document for the whole API: the gateway's own routes plus every service's ``/v1``
routes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from leadline_gateway.contract import apply_contract

log = logging.getLogger("leadline.gateway.openapi")


async def _fetch(
    session: aiohttp.ClientSession, name: str, base: str
) -> tuple[str, dict[str, Any] | None]:
    try:
        async with session.get(
            base + "/openapi.json", timeout=aiohttp.ClientTimeout(total=5)
        ) as response:
            if response.status == 200:
                return name, await response.json()
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("no OpenAPI document from %s: %s", name, exc)
    return name, None


async def merged_openapi(
    app: FastAPI,
    session: aiohttp.ClientSession,
    services: dict[str, str],
    proxied_prefixes: list[str],
) -> tuple[dict[str, Any], list[str]]:
    """The merged document and the services whose documents could not be fetched."""
    document = get_openapi(
        title="Leadline API",
        version="1.0.0",
        routes=app.routes,
        description="Mail sync, Life of the Lead, Smart Mail and sending quotas for CRMs. "
        "Errors are RFC 9457 application/problem+json.",
    )
    paths: dict[str, Any] = document.setdefault("paths", {})
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    missing: list[str] = []
    for name, fetched in await asyncio.gather(
        *(_fetch(session, n, u) for n, u in services.items())
    ):
        if fetched is None:
            missing.append(name)
            continue
        for path, item in fetched.get("paths", {}).items():
            if path.startswith("/v1/"):
                paths[path] = item
        for schema_name, schema in fetched.get("components", {}).get("schemas", {}).items():
            if schemas.setdefault(schema_name, schema) != schema:
                log.warning("schema %s differs between services; keeping the first", schema_name)
    document["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    document["security"] = [{"apiKey": []}]
    return apply_contract(document, proxied_prefixes), missing
