"""Queries behind the Mail Sync endpoints (every one scoped by company)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_sync.models import folder_cursor, mailbox, mailbox_error


async def folder_cursors(session: AsyncSession, mailbox_id: uuid.UUID) -> list[Row[Any]]:
    return list((await session.execute(
        select(folder_cursor).where(folder_cursor.c.mailbox_id == mailbox_id).order_by(folder_cursor.c.folder)
    )).all())


async def error_page(session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID, limit: int,
                     before: tuple[datetime, uuid.UUID] | None) -> list[Row[Any]]:
    """The user's error log, newest first (all of their mailboxes: a reconnect keeps the history)."""
    statement = (
        select(mailbox_error)
        .join(mailbox, mailbox.c.id == mailbox_error.c.mailbox_id)
        .where(mailbox.c.company_id == company_id, mailbox.c.user_id == user_id,
               mailbox_error.c.company_id == company_id)
        .order_by(mailbox_error.c.occurred_at.desc(), mailbox_error.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        statement = statement.where(tuple_(mailbox_error.c.occurred_at, mailbox_error.c.id) < before)
    return list((await session.execute(statement)).all())


async def mailbox_page(session: AsyncSession, company_id: uuid.UUID, limit: int, status: str | None,
                       after: tuple[datetime, uuid.UUID] | None) -> list[Row[Any]]:
    statement = (
        select(mailbox).where(mailbox.c.company_id == company_id)
        .order_by(mailbox.c.created_at, mailbox.c.id).limit(limit)
    )
    if status is not None:
        statement = statement.where(mailbox.c.status == status)
    if after is not None:
        statement = statement.where(tuple_(mailbox.c.created_at, mailbox.c.id) > after)
    return list((await session.execute(statement)).all())
