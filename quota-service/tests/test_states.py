"""The reservation and slot machines: the tables are the diagrams, and every other move is refused."""

from __future__ import annotations

import itertools

import pytest

from leadline_quota.states import (
    RESERVATION_MOVES,
    SLOT_MOVES,
    ForbiddenMove,
    ReservationState,
    SlotState,
    check_constraint,
    move,
)

R = ReservationState


def test_the_tables_are_the_diagrams() -> None:
    assert RESERVATION_MOVES == {(R.RESERVED, R.COMMITTED), (R.RESERVED, R.RELEASED)}
    assert SLOT_MOVES == {(SlotState.PENDING, SlotState.GRANTED)}
    assert check_constraint(ReservationState) == "state IN ('reserved', 'committed', 'released')"
    assert check_constraint(SlotState) == "state IN ('granted', 'pending')"


@pytest.mark.parametrize(
    ("start", "to"),
    # sorted: a set's order differs between processes, and parallel workers must collect the same tests in order
    [
        *sorted(set(itertools.product(R, R)) - RESERVATION_MOVES),
        *sorted(set(itertools.product(SlotState, SlotState)) - SLOT_MOVES),
    ],
)
def test_every_move_off_the_diagram_is_refused(
    start: ReservationState | SlotState, to: ReservationState | SlotState
) -> None:
    with pytest.raises(ForbiddenMove):
        move(start, to)  # type: ignore[type-var]


def test_the_diagrams_moves_are_allowed() -> None:
    assert [move(a, b) for a, b in sorted(RESERVATION_MOVES)] == [R.COMMITTED, R.RELEASED]
    assert move(SlotState.PENDING, SlotState.GRANTED) is SlotState.GRANTED
