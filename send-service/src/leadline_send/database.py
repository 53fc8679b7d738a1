"""Two ways to reach the send schema, both from the kit's :class:`Database`.

A unit of work (``Database.session()``) when several writes must commit
together, and :func:`autocommit` for steps that are one statement: each
statement commits on its own in one round trip, with no BEGIN and COMMIT
around it, on a connection taken only if a statement runs.  A single
``POST /v1/messages`` uses the latter, and most run nothing on it: their lead
lookup and insert are plain SQL (``Database.plain``), the route is kept a few
seconds; what is left is the idempotency key's lookup and a marketing
message's suppression check.  (The delivery workers' claim, record before the
end of data and settle run on asyncpg pools of their own, see
:mod:`leadline_send.delivery.worker`.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from leadline_kit.db import Database

Executor = AsyncSession | AsyncConnection


@contextlib.asynccontextmanager
async def autocommit(db: Database) -> AsyncIterator[AsyncSession]:
    async with AsyncSession(db.engine.execution_options(isolation_level="AUTOCOMMIT")) as session:
        yield session
