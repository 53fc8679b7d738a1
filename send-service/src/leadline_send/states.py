"""The send service's state machines in code: a message's state and its attempt's phase.

The diagram of ``outgoing_message.state`` is in :mod:`leadline_send.delivery.repository`;
:data:`MESSAGE_MOVES` is that diagram as a table, and :func:`move` refuses what it does not allow.
The SQL that changes a state names its states through these enums (``sql``), so the models' CHECK
constraints, the API's schema and the queue's statements cannot disagree on a spelling.

An attempt (``send_attempt.phase``) is ``connecting`` from its claim, ``data`` once recorded before
the end of data (R21), ``done`` when settled, from either (:data:`PHASE_MOVES`).  Its ``outcome`` is
a :class:`Reason`: why the attempt ended as it did, the label of ``leadline_send_outcomes_total``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TypeVar


class MessageState(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    BOUNCED = "bounced"
    UNKNOWN = "unknown"


S = MessageState
# Due messages, claimed alike (deferred ones once their next attempt is due).
DUE = (S.QUEUED, S.DEFERRED)
# Still in motion: the queue-depth gauge counts these (terminal states grow without bound).
OPEN = (S.QUEUED, S.SENDING, S.DEFERRED, S.UNKNOWN)
# What the user may resend on purpose (R21: an unknown one is never resent by itself).
RESENDABLE = (S.UNKNOWN, S.FAILED, S.BOUNCED)
# The server has the message, or may have: it counts against the quota.
REACHED_SERVER = (S.SENT, S.UNKNOWN)

MESSAGE_MOVES: dict[MessageState, frozenset[MessageState]] = {
    S.QUEUED: frozenset({S.SENDING}),  # claimed
    S.DEFERRED: frozenset({S.SENDING}),  # claimed once due
    # settled by the server's answer; queued again when given back unsent (a stop, recovery before
    # DATA)
    S.SENDING: frozenset({S.SENT, S.DEFERRED, S.FAILED, S.UNKNOWN, S.QUEUED}),
    S.SENT: frozenset({S.BOUNCED}),  # a hard bounce came back
    # found in the Sent folder; a bounce; a resend
    S.UNKNOWN: frozenset({S.SENT, S.BOUNCED, S.QUEUED}),
    S.FAILED: frozenset({S.QUEUED}),  # resent on purpose
    S.BOUNCED: frozenset({S.QUEUED, S.BOUNCED}),  # resent on purpose; a later hard notice
}


class AttemptPhase(StrEnum):
    CONNECTING = "connecting"  # claimed; the server has not had the end of data
    DATA = "data"  # recorded before the end of data (R21): a lost reply makes the message unknown
    DONE = "done"


P = AttemptPhase
PHASE_MOVES: dict[AttemptPhase, frozenset[AttemptPhase]] = {
    P.CONNECTING: frozenset({P.DATA, P.DONE}),  # recorded before the end of data; settled before it
    P.DATA: frozenset({P.DONE}),  # settled by the server's answer, or by recovery
    P.DONE: frozenset(),
}

Machine = TypeVar("Machine", MessageState, AttemptPhase)


class ForbiddenMove(ValueError):
    """A state change the diagram does not allow: a bug, never an input error."""


def _allowed(current: MessageState | AttemptPhase) -> frozenset[MessageState | AttemptPhase]:
    return MESSAGE_MOVES[current] if isinstance(current, MessageState) else PHASE_MOVES[current]


def move(current: Machine, to: Machine) -> Machine:
    """``to``, if its machine's diagram allows it from ``current``."""
    if to not in _allowed(current):
        what = "a message" if isinstance(current, MessageState) else "an attempt"
        raise ForbiddenMove(f"{what} does not go from {current} to {to}")
    return to


def moves_into(to: Machine) -> tuple[Machine, ...]:
    """The states its machine's diagram lets move to ``to``: the allowed prior states of an SQL
    ``WHERE``."""
    return tuple(current for current in type(to) if to in _allowed(current))


def settled_from_sending(to: MessageState) -> MessageState:
    """Where an attempt may leave a ``sending`` message."""
    return move(S.SENDING, to)


class Reason(StrEnum):
    """Why an attempt ended as it did (``send_attempt.outcome``)."""

    SENT = "sent"
    NO_REPLY = "no-reply"  # silence after the end of data: unknown (R21)
    BEFORE_DATA = "before-data"  # a failure before the end of data: retried
    ENVELOPE_4XX = "envelope-4xx"
    ENVELOPE_5XX = "envelope-5xx"
    RCPT_4XX = "rcpt-4xx"
    RCPT_5XX = "rcpt-5xx"
    DATA_4XX = "data-4xx"
    DATA_5XX = "data-5xx"
    UNSUBSCRIBED = "unsubscribed"
    UNAVAILABLE = "unavailable"  # the quota or sync service did not answer
    NO_ACCOUNT = "no-account"
    QUOTA = "quota"
    QUOTA_NEVER = "quota-never"
    INTERRUPTED = "interrupted"  # an internal error or a stopped process

    @classmethod
    def refused(cls, stage: str, code: int) -> Reason:
        """The server refused at ``stage`` (envelope, rcpt, data): 5xx for good, anything else for
        now."""
        return cls(f"{stage}-{'5xx' if code >= 500 else '4xx'}")


def sql(states: Iterable[StrEnum]) -> str:
    """``('a', 'b')`` for an SQL ``IN`` list (the values are this module's constants, never
    input)."""
    return "(" + ", ".join(f"'{state.value}'" for state in states) + ")"
