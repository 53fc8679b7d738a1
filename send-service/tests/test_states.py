"""The message and attempt machines as tables: the moves of the diagrams pass, every other one is refused."""

from __future__ import annotations

import pytest

from leadline_send.delivery.outcome import Outcome
from leadline_send.states import (
    MESSAGE_MOVES,
    PHASE_MOVES,
    AttemptPhase,
    ForbiddenMove,
    MessageState,
    Reason,
    move,
    moves_into,
)

S = MessageState
DIAGRAM = {  # delivery.repository's diagram, edge by edge
    (S.QUEUED, S.SENDING),
    (S.DEFERRED, S.SENDING),
    (S.SENDING, S.SENT),
    (S.SENDING, S.DEFERRED),
    (S.SENDING, S.FAILED),
    (S.SENDING, S.UNKNOWN),
    (S.SENDING, S.QUEUED),
    (S.SENT, S.BOUNCED),
    (S.UNKNOWN, S.SENT),
    (S.UNKNOWN, S.BOUNCED),
    (S.UNKNOWN, S.QUEUED),
    (S.FAILED, S.QUEUED),
    (S.BOUNCED, S.QUEUED),
    (S.BOUNCED, S.BOUNCED),
}


def test_the_table_is_the_diagram() -> None:
    assert {(a, b) for a, targets in MESSAGE_MOVES.items() for b in targets} == DIAGRAM


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("to", list(S))
def test_every_move_outside_the_diagram_is_refused(current: MessageState, to: MessageState) -> None:
    if (current, to) in DIAGRAM:
        assert move(current, to) is to
    else:
        with pytest.raises(ForbiddenMove):
            move(current, to)


P = AttemptPhase
PHASES = {(P.CONNECTING, P.DATA), (P.CONNECTING, P.DONE), (P.DATA, P.DONE)}  # states.py's docstring


@pytest.mark.parametrize("current", list(P))
@pytest.mark.parametrize("to", list(P))
def test_an_attempts_phase_moves_only_forward(current: AttemptPhase, to: AttemptPhase) -> None:
    assert {(a, b) for a, targets in PHASE_MOVES.items() for b in targets} == PHASES
    if (current, to) in PHASES:
        assert move(current, to) is to
    else:
        with pytest.raises(ForbiddenMove, match="an attempt does not go"):
            move(current, to)


@pytest.mark.parametrize("to", list(S))
def test_the_prior_states_of_a_message_are_the_diagrams(to: MessageState) -> None:
    assert set(moves_into(to)) == {a for a, b in DIAGRAM if b is to}


@pytest.mark.parametrize("to", list(P))
def test_the_prior_phases_of_an_attempt_are_the_diagrams(to: AttemptPhase) -> None:
    assert set(moves_into(to)) == {a for a, b in PHASES if b is to}
    assert moves_into(P.DONE) == (P.CONNECTING, P.DATA)  # the settle's WHERE (delivery.repository)


def test_an_attempt_cannot_end_where_a_sending_message_never_goes() -> None:
    with pytest.raises(ForbiddenMove):
        Outcome(S.BOUNCED, Reason.INTERRUPTED)
    assert (
        Reason.refused("rcpt", 452) is Reason.RCPT_4XX
        and Reason.refused("data", 554) is Reason.DATA_5XX
    )
