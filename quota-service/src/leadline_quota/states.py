"""The quota service's state machines in code: a reservation's state and a mailbox slot's.

A reservation (``reservation.state``, R14)::

    reserved ──commit──▶ committed      the usage counts in every window
        │
        └────release──▶ released        capacity given back (pruned)

A reserved one that is never settled counts until ``expires_at`` and is then pruned; a commit that
arrives late still records the usage.  Committed and released are final.

A mailbox slot (``mailbox_slot.state``, R9)::

    (claim) ──room──▶ granted
    (claim) ─no room─▶ pending ──room (oldest first)──▶ granted

A released slot is deleted: it has no state.  :data:`RESERVATION_MOVES` and :data:`SLOT_MOVES` are
the diagrams as tables, and :func:`move` refuses what they do not allow; the statements that change
a state name it through these enums, so the models' CHECK constraints and the SQL cannot disagree on
a spelling.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar


class ReservationState(StrEnum):
    RESERVED = "reserved"
    COMMITTED = "committed"
    RELEASED = "released"


class SlotState(StrEnum):
    GRANTED = "granted"
    PENDING = "pending"


R = ReservationState
RESERVATION_MOVES: frozenset[tuple[ReservationState, ReservationState]] = frozenset(
    {(R.RESERVED, R.COMMITTED), (R.RESERVED, R.RELEASED)}
)
SLOT_MOVES: frozenset[tuple[SlotState, SlotState]] = frozenset(
    {(SlotState.PENDING, SlotState.GRANTED)}
)

State = TypeVar("State", ReservationState, SlotState)


class ForbiddenMove(ValueError):
    """A state change the diagram does not allow: a bug, never an input error."""


def move(current: State, to: State) -> State:
    """``to``, if its machine's diagram allows it from ``current``."""
    moves: (
        frozenset[tuple[ReservationState, ReservationState]]
        | frozenset[tuple[SlotState, SlotState]]
    )
    moves = RESERVATION_MOVES if isinstance(current, ReservationState) else SLOT_MOVES
    if (current, to) not in moves:
        raise ForbiddenMove(f"a {type(current).__name__} does not go from {current} to {to}")
    return to


def check_constraint(states: type[StrEnum]) -> str:
    """The CHECK constraint that keeps a state column to its enum's members."""
    return "state IN (" + ", ".join(f"'{s.value}'" for s in states) + ")"
