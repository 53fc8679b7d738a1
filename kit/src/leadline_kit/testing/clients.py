"""Run a service app in-process (lifespan included) and call it as a signed caller."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from leadline_kit.identity import Identity, identity_headers


def make_identity(
    role: str = "administrator",
    company_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
) -> Identity:
    return Identity(
        company_id=company_id or uuid.uuid4(), user_id=user_id or uuid.uuid4(), role=role
    )


class SignedAuth(httpx.Auth):
    """Signs each request with a fresh identity header, as the gateway does."""

    def __init__(self, identity: Identity, secret: str) -> None:
        self.identity = identity
        self.secret = secret

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        request.headers.update(identity_headers(self.identity, self.secret))
        yield request


@asynccontextmanager
async def running_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Start the app's lifespan and yield an unauthenticated client bound to it."""
    async with app.router.lifespan_context(app):
        # like a real server: an unhandled error is a 500 problem response, not an exception in the
        # test
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client


def as_caller(client: httpx.AsyncClient, identity: Identity, secret: str) -> httpx.AsyncClient:
    """A client sharing ``client``'s transport that signs as ``identity``."""
    return httpx.AsyncClient(
        transport=client._transport, base_url=client.base_url, auth=SignedAuth(identity, secret)
    )
