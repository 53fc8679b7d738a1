"""Database access: one engine per service, one schema per service, commit at the edge.

Services and repositories never commit: the request dependency or the worker
scope (:meth:`Database.session`) commits when the unit of work ends and rolls
back on any exception, so a failure leaves nothing half-written.

A hot path whose every statement stands alone (a gateway's key lookup, the send
API's lead lookup and insert) runs plain SQL on asyncpg instead
(:meth:`Database.plain`): each statement commits by itself, and none pays for
SQLAlchemy's connection checkout, statement handling and result rows, which cost
more CPU than the statement itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
import pydantic_core
from fastapi import Depends, Request
from sqlalchemy import MetaData, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def service_metadata(schema: str) -> MetaData:
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


def json_text(value: Any) -> str:
    """A ``jsonb`` value's text, by pydantic-core: about twice as fast as ``json.dumps`` on the 10
    KB drafts of Smart Mail, and the database keeps the same value (jsonb is stored parsed)."""
    return pydantic_core.to_json(value).decode()


json_value = pydantic_core.from_json  # the reverse, three times as fast as json.loads


def asyncpg_dsn(url: str) -> str:
    """The plain ``postgresql://`` DSN asyncpg wants, from a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "53", "57P01", "57P02", "57P03")
"""Connection exceptions, serialization failures and deadlocks, insufficient resources (too many
connections), the server shutting down or starting: a later try may not meet them."""


def transient(error: BaseException) -> bool:
    """Whether a database error may pass if the work is tried again later: no connection free in the
    pool, the server away, restarting or refusing connections, the connection lost, a deadlock.  Not
    a constraint violation or a bad statement: trying those again gives the same error."""
    if isinstance(
        error, sa_exc.TimeoutError | sa_exc.OperationalError | sa_exc.InterfaceError | OSError
    ):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        sqlstate = getattr(error.orig, "sqlstate", None) or ""
        return error.connection_invalidated or sqlstate.startswith(TRANSIENT_SQLSTATES)
    return False


async def json_codec(conn: asyncpg.Connection) -> None:
    """``jsonb`` as Python values on a plain asyncpg connection, by the same functions as the
    engine."""
    await conn.set_type_codec("jsonb", encoder=json_text, decoder=json_value, schema="pg_catalog")


async def nothing_to_reset(conn: asyncpg.Connection) -> None:
    """For asyncpg pools whose statements change no session state (see Database.plain): a connection
    goes back to the pool as it is, where asyncpg's default reset is one more round trip per use."""


class Database:
    def __init__(
        self,
        url: str,
        schema: str,
        pool_size: int = 10,
        pool_timeout: float = 30.0,
        *,
        queued: bool = False,
    ) -> None:
        """``pool_timeout``: how long a caller waits for a connection when all are in use; past it
        the pool raises, and an endpoint answers 503 with Retry-After
        (errors.install_problem_handlers).

        ``queued``: for many background workers sharing a few connections.  At most ``pool_size``
        sessions run at once and the others wait their turn, in order and without a timeout, so that
        thousands of workers never need thousands of connections nor time out in the pool."""
        self.url = url
        self.schema = schema
        self.turns = asyncio.Semaphore(pool_size) if queued else None
        self.pool_size = pool_size
        self.pool_timeout = pool_timeout
        self._plain: asyncpg.Pool | None = None
        self._plain_opening = asyncio.Lock()
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=0 if queued else pool_size,
            pool_timeout=pool_timeout,
            pool_pre_ping=False,
            json_serializer=json_text,
            json_deserializer=json_value,
            connect_args={
                "server_settings": {"search_path": f"{schema},public", "application_name": schema}
            },
        )
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits on success, rolls back on any exception."""
        async with (
            self.turns or contextlib.nullcontext(),
            self.sessionmaker() as session,
            session.begin(),
        ):
            yield session

    @asynccontextmanager
    async def plain(self) -> AsyncIterator[asyncpg.Connection]:
        """An asyncpg connection of the schema for plain SQL (``$1`` parameters, statements prepared
        once per connection): each statement commits on its own, unless the caller opens
        ``conn.transaction()``.  Callers change no session state (no SET, LISTEN or advisory lock):
        the connection goes back to the pool without a reset.  The pool opens at first use; no
        connection free within ``pool_timeout`` raises the engine's own pool timeout (a 503, as
        there)."""
        if self._plain is None:
            async with self._plain_opening:
                if self._plain is None:
                    self._plain = await asyncpg.create_pool(
                        asyncpg_dsn(self.url),
                        min_size=1,
                        max_size=self.pool_size,
                        init=json_codec,
                        reset=nothing_to_reset,
                        server_settings={
                            "search_path": f"{self.schema},public",
                            "application_name": self.schema,
                        },
                    )
        try:
            conn = await self._plain.acquire(timeout=self.pool_timeout)
        except TimeoutError as exc:
            raise sa_exc.TimeoutError(
                f"no plain connection free within {self.pool_timeout} s"
            ) from exc
        try:
            yield conn
        finally:
            await self._plain.release(conn)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self._plain is not None:
            await self._plain.close()
            self._plain = None
        await self.engine.dispose()


async def request_session(request: Request) -> AsyncIterator[AsyncSession]:
    database: Database = request.app.state.runtime.db
    async with database.session() as session:
        yield session


# scope="function": the unit of work commits when the endpoint returns, before the response is sent.
# FastAPI's default ("request") would commit after sending, so a client could be told 201 for a
# change whose commit then fails.
Session = Annotated[AsyncSession, Depends(request_session, scope="function")]
