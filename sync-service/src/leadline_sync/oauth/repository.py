"""Every query of OAuth2 sign-ins (``flow.py``: the states in progress) and of a mailbox's stored
tokens (``tokens.py``: their renewal under a per-mailbox advisory lock)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.sealing import Sealed
from leadline_sync.models import mailbox, oauth_state

# --- sign-ins in progress (flow.py)
# ------------------------------------------------------------------------


async def forget_expired_states(session: AsyncSession, now: datetime) -> None:
    await session.execute(
        # unscoped: housekeeping of every company: sign-ins expired a day ago
        oauth_state.delete().where(oauth_state.c.expires_at < now - timedelta(days=1))
    )


async def insert_state(session: AsyncSession, **values: Any) -> None:
    await session.execute(oauth_state.insert().values(**values))


async def take_state(
    session: AsyncSession, digest: bytes, now: datetime, *, handed_off: bool
) -> Any:
    """The live sign-in whose state (or, ``handed_off``, whose handed-back sign-in) has the SHA-256
    ``digest``, marked used (``used_at`` / ``finished_at``) in the same statement; None if unknown,
    expired or used."""
    match: ColumnElement[Any]
    if handed_off:
        match, unused, mark = oauth_state.c.handoff_sha256, oauth_state.c.finished_at, "finished_at"
    else:
        match, unused, mark = oauth_state.c.state_sha256, oauth_state.c.used_at, "used_at"
    return (
        await session.execute(
            # unscoped: the provider's redirect carries no identity; the secret state picks the row
            update(oauth_state)
            .where(match == digest, unused.is_(None), oauth_state.c.expires_at > now)
            .values({mark: now})
            .returning(oauth_state)
        )
    ).first()


async def hand_off(
    session: AsyncSession, state_id: uuid.UUID, digest: bytes, expires_at: datetime, sealed: Sealed
) -> None:
    """The sign-in waits for its starter's key: the one-time sign-in's SHA-256, the code sealed
    beside the verifier."""
    await session.execute(
        # unscoped: by the id of the sign-in the secret state picked
        update(oauth_state)
        .where(oauth_state.c.id == state_id)
        .values(
            handoff_sha256=digest,
            expires_at=expires_at,
            verifier_key_id=sealed.key_id,
            verifier_wrapped_key=sealed.wrapped_key,
            verifier_ciphertext=sealed.ciphertext,
        )
    )


# --- a mailbox's tokens (tokens.py)
# ------------------------------------------------------------------------


def _lock_key(mailbox_id: uuid.UUID) -> int:
    """A signed 64-bit advisory lock key for the mailbox (namespaced by its high bits being the
    id's)."""
    return int.from_bytes(mailbox_id.bytes[:8], "big", signed=True)


async def lock_tokens(session: AsyncSession, mailbox_id: uuid.UUID) -> None:
    """The mailbox's renewal lock, across processes and replicas, until the transaction ends."""
    await session.execute(select(func.pg_advisory_xact_lock(_lock_key(mailbox_id))))


async def sealed_tokens(session: AsyncSession, mailbox_id: uuid.UUID) -> bytes | None:
    """The mailbox's sealed tokens as stored now."""
    stored: bytes | None = await session.scalar(
        # unscoped: by the id of a mailbox row its caller read
        select(mailbox.c.credential_ciphertext).where(mailbox.c.id == mailbox_id)
    )
    return stored


async def expire_access_token(session: AsyncSession, mailbox_id: uuid.UUID, now: datetime) -> None:
    await session.execute(
        # unscoped: by the id of a mailbox row its caller read
        update(mailbox).where(mailbox.c.id == mailbox_id).values(oauth_expires_at=now)
    )


async def store_tokens(
    session: AsyncSession, mailbox_id: uuid.UUID, sealed: Sealed, expires_at: datetime
) -> None:
    await session.execute(
        # unscoped: by the id of a mailbox row its caller read
        update(mailbox)
        .where(mailbox.c.id == mailbox_id)
        .values(
            credential_key_id=sealed.key_id,
            credential_wrapped_key=sealed.wrapped_key,
            credential_ciphertext=sealed.ciphertext,
            oauth_expires_at=expires_at,
        )
    )
