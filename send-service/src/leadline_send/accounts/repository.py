"""Every query of company SMTP accounts (``service.py`` holds the rules; delivery reads the accounts
that may send through ``delivery/accounts.py``, on its hot path, kept a few seconds there)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_send.database import Executor
from leadline_send.models import smtp_account


async def account(
    session: AsyncSession, company_id: uuid.UUID, account_id: uuid.UUID
) -> Row[Any] | None:
    return (
        await session.execute(
            select(smtp_account).where(
                smtp_account.c.company_id == company_id, smtp_account.c.id == account_id
            )
        )
    ).first()


# An account sends only once it is active and confirmed, and never while in error (R15).
SENDING = (
    smtp_account.c.active.is_(True),
    smtp_account.c.confirmed_at.is_not(None),
    smtp_account.c.error.is_(None),
)


async def sending_accounts(
    session: Executor, company_id: uuid.UUID, account_type: str
) -> list[Row[Any]]:
    """The company's accounts of ``account_type`` that may send, in their display order."""
    return list(
        (
            await session.execute(
                select(smtp_account)
                .where(
                    smtp_account.c.company_id == company_id,
                    smtp_account.c.type == account_type,
                    *SENDING,
                )
                .order_by(smtp_account.c.display_order, smtp_account.c.created_at)
            )
        ).all()
    )


async def sending_account(
    session: Executor, company_id: uuid.UUID, account_id: uuid.UUID
) -> Row[Any] | None:
    """The account, if it may send."""
    return (
        await session.execute(
            select(smtp_account).where(
                smtp_account.c.id == account_id, smtp_account.c.company_id == company_id, *SENDING
            )
        )
    ).first()


async def mark_unreadable(session: Executor, account_ids: list[uuid.UUID], fix: str) -> None:
    """Accounts whose stored password does not open are in error (with ``fix``) until it is entered
    again."""
    await session.execute(
        # unscoped: by the ids of account rows its caller read scoped
        update(smtp_account)
        .where(smtp_account.c.id.in_(account_ids), smtp_account.c.error.is_(None))
        .values(error=fix, error_at=func.now())
    )


async def accounts(session: AsyncSession, company_id: uuid.UUID) -> list[Row[Any]]:
    """The company's accounts by type, in their display order."""
    return list(
        (
            await session.execute(
                select(smtp_account)
                .where(smtp_account.c.company_id == company_id)
                .order_by(
                    smtp_account.c.type, smtp_account.c.display_order, smtp_account.c.created_at
                )
            )
        ).all()
    )


async def insert_account(
    session: AsyncSession, company_id: uuid.UUID, account_id: uuid.UUID, values: dict[str, Any]
) -> None:
    await session.execute(
        smtp_account.insert().values(id=account_id, company_id=company_id, **values)
    )


async def update_account(
    session: AsyncSession, company_id: uuid.UUID, account_id: uuid.UUID, **values: Any
) -> None:
    await session.execute(
        update(smtp_account)
        .where(smtp_account.c.company_id == company_id, smtp_account.c.id == account_id)
        .values(**values)
    )


async def delete_account(
    session: AsyncSession, company_id: uuid.UUID, account_id: uuid.UUID
) -> None:
    await session.execute(
        delete(smtp_account).where(
            smtp_account.c.company_id == company_id, smtp_account.c.id == account_id
        )
    )


async def sealed_under_older_keys(session: AsyncSession, current_key: str, limit: int) -> list[Any]:
    """Up to ``limit`` accounts whose password is sealed under another key than ``current_key``,
    locked (skipping rows another rotation holds): id, company_id, password_sealed, key_id."""
    return list(
        (
            await session.execute(
                # unscoped: key rotation is an operator command over every company's rows
                select(
                    smtp_account.c.id,
                    smtp_account.c.company_id,
                    smtp_account.c.password_sealed,
                    smtp_account.c.key_id,
                )
                .where(
                    smtp_account.c.password_sealed.is_not(None),
                    smtp_account.c.key_id != current_key,
                )
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
    )
