"""The mailbox status machine (R8, R9), the mailbox-limit slot beside it, and how a mailbox is
synced.

Status of a mailbox::

                          slot granted
      connect ──► pending ──────────────► enabled
                   │  ▲                     │  ▲
     limit unknown │  │ limit full  failure │  │ connected again, slot granted,
                   ▼  │                     ▼  │ or new settings saved
                 ┌──────────────────────────────┐
                 │            error             │
                 └──────────────────────────────┘
                                │ 48 h without one successful connection
                                ▼ (retries stop, the slot is given back)
                        connection_failed ──(new settings saved)──► pending

      every status but disabled ──(disconnect)──► disabled   (final: reconnecting makes a new mailbox)

The moves, one a line (a test reads them here and compares them with ``MOVES``)::

    pending → pending                 a new reason (the queue position)
    pending → enabled                 the company's mailbox limit has room
    pending → error                   the mailbox limit could not be checked
    pending → disabled                the user disconnected
    enabled → enabled                 a new reason (the plan's daily limit), the lease given back
    enabled → error                   a connection failed
    enabled → disabled                the user disconnected
    error → error                     another failure, or another reason
    error → enabled                   connected again, a slot granted, or new settings saved
    error → pending                   the mailbox limit answered: full
    error → connection_failed         48 hours without one successful connection
    error → disabled                  the user disconnected
    connection_failed → pending       new settings saved: the slot is asked for again
    connection_failed → disabled      the user disconnected

Anything else is refused (:class:`ForbiddenMove`): a disabled mailbox never
changes again, and a mailbox reaches ``connection_failed`` only from ``error``.

The slot is the conversation with the quota service about the company's
mailbox limit: ``unclaimed`` (ask) → ``granted`` | ``pending`` → ``releasing``
(tell it, retried until it answers) → ``released``; a released (or still
releasing) slot of a mailbox whose settings are saved again is ``unclaimed``
again, and a slot never asked for is simply ``released``.

``sync_mode`` says how an enabled mailbox is synced: ``live`` (a replica holds
its connection and waits in IDLE) or ``rotating`` (served in turns — connect,
sync both folders, disconnect — when the replicas hold fewer mailboxes than
are enabled).  A ``live`` mode whose lease expired is shown as ``rotating``:
nobody holds it any more.
"""  # noqa: E501

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

# the statuses are the events' (one definition); their moves are this module's
from leadline_proto.events import MailboxStatus as MailboxStatus


class Slot(StrEnum):
    UNCLAIMED = "unclaimed"
    GRANTED = "granted"
    PENDING = "pending"
    RELEASING = "releasing"
    RELEASED = "released"


class SyncMode(StrEnum):
    LIVE = "live"
    ROTATING = "rotating"


INITIAL = MailboxStatus.PENDING
"""A new connection waits for the company's mailbox limit."""

SYNCED = (MailboxStatus.ENABLED, MailboxStatus.ERROR)
"""Statuses a replica syncs (``error`` is retried with backoff)."""

COUNTS_FOR_BILLING = (MailboxStatus.ENABLED, MailboxStatus.ERROR)

State = TypeVar("State", bound=StrEnum)


def _pairs(table: dict[State, set[State]]) -> frozenset[tuple[State, State]]:
    return frozenset((start, end) for start, ends in table.items() for end in ends)


MOVES = _pairs(
    {
        MailboxStatus.PENDING: {
            MailboxStatus.PENDING,
            MailboxStatus.ENABLED,
            MailboxStatus.ERROR,
            MailboxStatus.DISABLED,
        },
        MailboxStatus.ENABLED: {MailboxStatus.ENABLED, MailboxStatus.ERROR, MailboxStatus.DISABLED},
        MailboxStatus.ERROR: {
            MailboxStatus.ERROR,
            MailboxStatus.ENABLED,
            MailboxStatus.PENDING,
            MailboxStatus.CONNECTION_FAILED,
            MailboxStatus.DISABLED,
        },
        MailboxStatus.CONNECTION_FAILED: {MailboxStatus.PENDING, MailboxStatus.DISABLED},
        MailboxStatus.DISABLED: set(),
    }
)
"""Allowed status moves (start, end): the list in the module docstring."""

SLOT_MOVES = _pairs(
    {
        Slot.UNCLAIMED: {Slot.GRANTED, Slot.PENDING, Slot.RELEASING, Slot.RELEASED},
        Slot.PENDING: {Slot.GRANTED, Slot.RELEASING},
        Slot.GRANTED: {Slot.RELEASING},
        Slot.RELEASING: {Slot.RELEASED, Slot.UNCLAIMED},
        Slot.RELEASED: {Slot.UNCLAIMED},
    }
)
"""Allowed slot moves besides staying."""


class ForbiddenMove(RuntimeError):
    """A status (or slot) change the diagram does not allow: a bug, refused before anything is
    written."""


def check_move(current: str, to: MailboxStatus) -> MailboxStatus:
    """``current`` as a status, if moving from it to ``to`` is allowed."""
    start = MailboxStatus(current)
    if (start, to) not in MOVES:
        raise ForbiddenMove(f"a mailbox cannot go from {start} to {to}")
    return start


def check_slot_move(current: str, to: Slot) -> Slot:
    """``current`` as a slot, if moving from it to ``to`` is allowed (staying is always allowed)."""
    start = Slot(current)
    if start != to and (start, to) not in SLOT_MOVES:
        raise ForbiddenMove(f"a mailbox slot cannot go from {start} to {to}")
    return start


def slot_given_back(current: str) -> Slot:
    """The slot of a mailbox that stops counting: one held or queued is released (told to the quota
    service)."""
    slot = Slot(current)
    if slot in (Slot.GRANTED, Slot.PENDING, Slot.RELEASING):
        return Slot.RELEASING
    return Slot.RELEASED
