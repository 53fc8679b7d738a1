"""Queries behind the Mail Sync endpoints, the connect path and the mailbox state machine's writes
(:mod:`leadline_sync.mailbox.service`), and the operators' mailbox metrics."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, case, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_sync.mailbox.states import SYNCED, MailboxStatus, Slot, SyncMode
from leadline_sync.models import folder_cursor, mailbox, mailbox_error, synced_message

HELD = and_(mailbox.c.lease_owner.is_not(None), mailbox.c.lease_expires_at > func.now())
"""A replica holds the mailbox right now (its lease runs: the database's clock)."""

CURRENT_SYNC_MODE: ColumnElement[str | None] = case(
    (mailbox.c.status != MailboxStatus.ENABLED, None),
    (and_(mailbox.c.sync_mode == SyncMode.LIVE, HELD), SyncMode.LIVE.value),
    else_=SyncMode.ROTATING.value,
)
(
    """How an enabled mailbox is synced now: ``live`` only while a replica holds it live; """
    """otherwise it waits its turn."""
)

WAITING_SINCE = func.coalesce(mailbox.c.last_synced_at, mailbox.c.connected_at)

SYNC_VIEW = (CURRENT_SYNC_MODE.label("current_sync_mode"), HELD.label("held"))
(
    """Columns the API shows beside a mailbox row (see """
    """:func:`leadline_sync.mailbox.service.waiting_reason`)."""
)


async def folder_cursors(session: AsyncSession, mailbox_id: uuid.UUID) -> list[Row[Any]]:
    return list(
        (
            await session.execute(
                select(folder_cursor)
                .where(folder_cursor.c.mailbox_id == mailbox_id)
                .order_by(folder_cursor.c.folder)
            )
        ).all()
    )


async def error_page(
    session: AsyncSession,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
) -> list[Row[Any]]:
    """The user's error log, newest first (all of their mailboxes: a reconnect keeps the
    history)."""
    statement = (
        select(mailbox_error)
        .join(mailbox, mailbox.c.id == mailbox_error.c.mailbox_id)
        .where(
            mailbox.c.company_id == company_id,
            mailbox.c.user_id == user_id,
            mailbox_error.c.company_id == company_id,
        )
        .order_by(mailbox_error.c.occurred_at.desc(), mailbox_error.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        statement = statement.where(
            tuple_(mailbox_error.c.occurred_at, mailbox_error.c.id) < before
        )
    return list((await session.execute(statement)).all())


async def own_mailbox(
    session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID
) -> Row[Any] | None:
    """The user's connected mailbox (any status but disabled) with :data:`SYNC_VIEW`."""
    return (
        await session.execute(
            select(mailbox, *SYNC_VIEW).where(
                mailbox.c.company_id == company_id,
                mailbox.c.user_id == user_id,
                mailbox.c.status != MailboxStatus.DISABLED,
            )
        )
    ).first()


async def mailbox_page(
    session: AsyncSession,
    company_id: uuid.UUID,
    limit: int,
    status: str | None,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[Row[Any]]:
    statement = (
        select(mailbox, *SYNC_VIEW)
        .where(mailbox.c.company_id == company_id)
        .order_by(mailbox.c.created_at, mailbox.c.id)
        .limit(limit)
    )
    if status is not None:
        statement = statement.where(mailbox.c.status == status)
    if after is not None:
        statement = statement.where(tuple_(mailbox.c.created_at, mailbox.c.id) > after)
    return list((await session.execute(statement)).all())


async def mailbox_counts(
    session: AsyncSession, now: datetime, rotation_seconds: float
) -> list[Row[Any]]:
    """Mailboxes of every company by status and current sync mode (operators' metrics, not a
    tenant's view).

    ``waiting_since`` and ``overdue`` count only mailboxes due now (not paused until a later
    attempt).
    """
    due = mailbox.c.next_attempt_at <= now
    overdue = and_(due, WAITING_SINCE < now - timedelta(seconds=rotation_seconds))
    return list(
        (
            await session.execute(
                # unscoped: operators' metrics over every company, no tenant sees them
                select(
                    mailbox.c.status,
                    CURRENT_SYNC_MODE.label("sync_mode"),
                    func.count().label("mailboxes"),
                    func.min(WAITING_SINCE).filter(due).label("waiting_since"),
                    func.count().filter(overdue).label("overdue"),
                ).group_by(mailbox.c.status, CURRENT_SYNC_MODE)
            )
        ).all()
    )


async def mailboxes_with_audit_gaps(session: AsyncSession) -> int:
    """Synced mailboxes whose last completeness audit of a folder found messages never examined
    (every company)."""
    return int(
        (
            await session.execute(
                # unscoped: operators' metrics over every company, no tenant sees them
                select(func.count(func.distinct(folder_cursor.c.mailbox_id)))
                .select_from(
                    folder_cursor.join(mailbox, mailbox.c.id == folder_cursor.c.mailbox_id)
                )
                .where(folder_cursor.c.audit_found > 0, mailbox.c.status.in_(SYNCED))
            )
        ).scalar_one()
    )


async def company_mailbox(
    session: AsyncSession, company_id: uuid.UUID, mailbox_id: uuid.UUID
) -> Row[Any] | None:
    """One mailbox of the company, any status."""
    return (
        await session.execute(
            select(mailbox).where(mailbox.c.company_id == company_id, mailbox.c.id == mailbox_id)
        )
    ).first()


async def latest_mailbox(
    session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID
) -> Row[Any] | None:
    """The user's connected mailbox, else the one disabled last."""
    return (
        await session.execute(
            select(mailbox)
            .where(mailbox.c.company_id == company_id, mailbox.c.user_id == user_id)
            .order_by(
                (mailbox.c.status == MailboxStatus.DISABLED).asc(), mailbox.c.connected_at.desc()
            )
            .limit(1)
        )
    ).first()


async def latest_error_kind(session: AsyncSession, mailbox_id: uuid.UUID) -> str | None:
    kind: str | None = (
        await session.execute(
            # unscoped: by the id of a mailbox row its caller read scoped
            select(mailbox_error.c.kind)
            .where(mailbox_error.c.mailbox_id == mailbox_id)
            .order_by(mailbox_error.c.occurred_at.desc(), mailbox_error.c.id.desc())
            .limit(1)
        )
    ).scalar()
    return kind


async def synced_at(
    session: AsyncSession, mailbox_id: uuid.UUID, folder: str, message_id: str
) -> datetime | None:
    """When the sync published the message of that Message-ID from the folder (None: never)."""
    at: datetime | None = (
        await session.execute(
            select(synced_message.c.synced_at).where(
                synced_message.c.mailbox_id == mailbox_id,
                synced_message.c.folder == folder,
                synced_message.c.message_id == message_id,
            )
        )
    ).scalar()
    return at


async def sealed_under_older_keys(
    session: AsyncSession, current_key_id: str, limit: int
) -> list[Any]:
    """Up to ``limit`` mailboxes whose credentials are sealed under another key than
    ``current_key_id``, locked (skipping rows another rotation holds), with their sealed
    credentials."""
    return list(
        (
            await session.execute(
                # unscoped: key rotation is an operator command over every company's rows
                select(
                    mailbox.c.id,
                    mailbox.c.company_id,
                    mailbox.c.credential_key_id,
                    mailbox.c.credential_wrapped_key,
                    mailbox.c.credential_ciphertext,
                )
                .where(
                    mailbox.c.credential_ciphertext.is_not(None),
                    mailbox.c.credential_key_id != current_key_id,
                )
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
    )


async def reseal(
    session: AsyncSession,
    company_id: uuid.UUID,
    mailbox_id: uuid.UUID,
    key_id: str,
    wrapped_key: bytes,
    ciphertext: bytes,
) -> None:
    await session.execute(
        update(mailbox)
        .where(mailbox.c.company_id == company_id, mailbox.c.id == mailbox_id)
        .values(
            credential_key_id=key_id,
            credential_wrapped_key=wrapped_key,
            credential_ciphertext=ciphertext,
        )
    )


async def slots_to_reconcile(session: AsyncSession, limit: int) -> list[Row[Any, Any, Any]]:
    """Mailboxes whose slot claim nobody answered (still unclaimed, pending or in error) or whose
    release is unconfirmed, oldest first: id, company_id, slot."""
    return list(
        (
            await session.execute(
                # unscoped: the slot reconciler is a worker over every company's mailboxes
                select(mailbox.c.id, mailbox.c.company_id, mailbox.c.slot)
                .where(
                    (
                        (mailbox.c.slot == Slot.UNCLAIMED)
                        & mailbox.c.status.in_((MailboxStatus.PENDING, MailboxStatus.ERROR))
                    )
                    | (mailbox.c.slot == Slot.RELEASING)
                )
                .order_by(mailbox.c.created_at)
                .limit(limit)
            )
        ).all()
    )


async def insert_mailbox(session: AsyncSession, **values: Any) -> None:
    """A new mailbox row: ``values`` are its columns (``id`` and ``company_id`` among them)."""
    await session.execute(mailbox.insert().values(**values))


async def active_mailbox(
    session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID, *, for_update: bool = False
) -> Row[Any] | None:
    """The user's connected mailbox (any status but disabled), if any; locked ``for_update``."""
    statement = select(mailbox).where(
        mailbox.c.company_id == company_id,
        mailbox.c.user_id == user_id,
        mailbox.c.status != MailboxStatus.DISABLED,
    )
    if for_update:
        statement = statement.with_for_update()
    return (await session.execute(statement)).first()


async def synced_by_another_user(
    session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID, address: str
) -> bool:
    """Whether another user of the company has ``address`` connected."""
    return (
        await session.execute(
            select(mailbox.c.id)
            .where(
                mailbox.c.company_id == company_id,
                mailbox.c.user_id != user_id,
                mailbox.c.address == address,
                mailbox.c.status != MailboxStatus.DISABLED,
            )
            .limit(1)
        )
    ).first() is not None


async def mailbox_by_id(
    session: AsyncSession, mailbox_id: uuid.UUID, *, for_update: bool = False
) -> Row[Any] | None:
    """The mailbox of that id, any company's (a worker's lookup by an id it holds)."""
    # unscoped: a worker's lookup by a mailbox id it holds; callers check the company where given one  # noqa: E501
    statement = select(mailbox).where(mailbox.c.id == mailbox_id)
    if for_update:
        statement = statement.with_for_update()
    return (await session.execute(statement)).first()


async def write_move(session: AsyncSession, mailbox_id: uuid.UUID, values: dict[str, Any]) -> None:
    """The columns of a status move the state machine checked
    (:func:`leadline_sync.mailbox.service.transition`)."""
    # unscoped: by the id of a mailbox row its caller read
    await session.execute(update(mailbox).where(mailbox.c.id == mailbox_id).values(**values))


async def move_slot(session: AsyncSession, mailbox_id: uuid.UUID, start: Slot, to: Slot) -> None:
    """The slot set to ``to`` if it is still ``start`` (a move checked by the caller)."""
    await session.execute(
        # unscoped: by the id of a mailbox its caller holds
        update(mailbox).where(mailbox.c.id == mailbox_id, mailbox.c.slot == start).values(slot=to)
    )


async def update_settings(
    session: AsyncSession, mailbox_id: uuid.UUID, now: datetime, values: dict[str, Any]
) -> None:
    await session.execute(
        # unscoped: by the id of a mailbox row its caller read scoped
        update(mailbox).where(mailbox.c.id == mailbox_id).values(updated_at=now, **values)
    )


async def insert_error(
    session: AsyncSession,
    company_id: uuid.UUID,
    mailbox_id: uuid.UUID,
    occurred_at: datetime,
    kind: str,
    message: str,
    fix: str,
) -> None:
    """One entry of the mailbox's error log."""
    await session.execute(
        mailbox_error.insert().values(
            id=uuid.uuid4(),
            company_id=company_id,
            mailbox_id=mailbox_id,
            occurred_at=occurred_at,
            kind=kind,
            message=message,
            fix=fix,
        )
    )
