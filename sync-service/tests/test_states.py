"""The mailbox status machine: the table matches the diagram, and every forbidden move is refused unwritten."""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from leadline_kit.db import Database
from leadline_kit.infra import PostgresServer
from leadline_kit.testing.fixtures import migrated_database
from leadline_proto import events
from leadline_sync.mailbox import repository, service, states
from leadline_sync.mailbox.states import MOVES, SLOT_MOVES, ForbiddenMove, MailboxStatus, Slot
from leadline_sync.models import mailbox, outbox

FORBIDDEN = sorted(set(itertools.product(MailboxStatus, MailboxStatus)) - MOVES)


def test_the_table_is_the_diagram() -> None:
    assert states.__doc__ is not None
    written = {
        (MailboxStatus(a), MailboxStatus(b))
        for a, b in re.findall(r"^ {4}(\w+) → (\w+) ", states.__doc__, re.M)
    }
    assert written == MOVES
    assert MailboxStatus is events.MailboxStatus, "one status type: the event carries every status"
    # what the diagram promises: disabled is final, connection_failed is reached only from error
    assert all(start != MailboxStatus.DISABLED for start, _ in MOVES)
    assert {start for start, end in MOVES if end == MailboxStatus.CONNECTION_FAILED} == {
        MailboxStatus.ERROR
    }
    assert len(FORBIDDEN) == 11


@pytest.mark.parametrize(("start", "to"), FORBIDDEN, ids=[f"{a}-{b}" for a, b in FORBIDDEN])
def test_forbidden_moves_are_refused(start: MailboxStatus, to: MailboxStatus) -> None:
    with pytest.raises(ForbiddenMove, match=f"from {start} to {to}"):
        states.check_move(start, to)


def test_slot_moves() -> None:
    for start, to in itertools.product(Slot, Slot):
        if start == to or (start, to) in SLOT_MOVES:
            assert states.check_slot_move(start, to) == start
        else:
            with pytest.raises(ForbiddenMove):
                states.check_slot_move(start, to)
    # a mailbox that stops counting never keeps a slot the quota service thinks it holds
    assert {states.slot_given_back(s) for s in (Slot.GRANTED, Slot.PENDING, Slot.RELEASING)} == {
        Slot.RELEASING
    }
    assert {states.slot_given_back(s) for s in (Slot.UNCLAIMED, Slot.RELEASED)} == {Slot.RELEASED}


async def test_transition_refuses_before_writing(postgres: PostgresServer) -> None:
    """Each forbidden move through :func:`service.transition` on a real row: refused, nothing written."""
    database = Database(await migrated_database(postgres, "leadline_sync"), "sync", pool_size=1)
    now = datetime.now(UTC)
    try:
        for start, to in FORBIDDEN:
            mailbox_id = uuid.uuid4()
            async with database.session() as session:
                await session.execute(
                    mailbox.insert().values(
                        id=mailbox_id,
                        company_id=uuid.uuid4(),
                        user_id=uuid.uuid4(),
                        address="a@acme.example",
                        provider="custom",
                        smtp_use="general",
                        status=start,
                        status_reason="as it was",
                        imap_host="127.0.0.1",
                        imap_port=143,
                        imap_tls="starttls",
                        imap_username="a",
                        smtp_host="127.0.0.1",
                        smtp_port=587,
                        smtp_tls="starttls",
                        smtp_username="a",
                        slot=Slot.RELEASED if start == MailboxStatus.DISABLED else Slot.GRANTED,
                        connected_at=now,
                    )
                )
            with pytest.raises(ForbiddenMove):
                async with database.session() as session:
                    row = await repository.mailbox_by_id(session, mailbox_id, for_update=True)
                    assert row is not None
                    await service.transition(session, row, to, "moved", now)
            async with database.session() as session:
                status, reason = (
                    await session.execute(
                        select(mailbox.c.status, mailbox.c.status_reason).where(
                            mailbox.c.id == mailbox_id
                        )
                    )
                ).one()
                assert (status, reason) == (start, "as it was")
        async with database.session() as session:
            assert await session.scalar(select(func.count()).select_from(outbox)) == 0
    finally:
        await database.dispose()
