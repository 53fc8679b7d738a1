"""Two ways to reach the send schema, both from the kit's :class:`Database`.

A unit of work (``Database.session()``) when several writes must commit
together, and :func:`autocommit` for steps that are one statement: each
statement commits on its own in one round trip, with no BEGIN and COMMIT
around it.  The API's single-message insert uses the latter.  (The delivery
workers' claim, record before the end of data and settle run on asyncpg pools of their own,
see :mod:`leadline_send.delivery.worker`.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from leadline_kit.db import Database

Executor = AsyncSession | AsyncConnection


@contextlib.asynccontextmanager
async def autocommit(db: Database) -> AsyncIterator[AsyncConnection]:
    async with db.engine.connect() as connection:
        yield await connection.execution_options(isolation_level="AUTOCOMMIT")
