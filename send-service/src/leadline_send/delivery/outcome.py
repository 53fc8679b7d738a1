"""What the end of an attempt means for its message: the state it moves to, and why.

The server's words decide (see delivery.worker): a 4xx reply, or any failure before the end of data,
defers the message with backoff and jitter; a 5xx fails it; silence after the end of data makes it
``unknown`` (R21: never resent by itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from leadline_kit import backoff as kit_backoff
from leadline_send.delivery.smtp import Reply
from leadline_send.states import MessageState, Reason, settled_from_sending


@dataclass(frozen=True)
class Outcome:
    state: MessageState
    reason: Reason
    reply: str | None = None
    error: str | None = None
    retry_at: datetime | None = None

    def __post_init__(self) -> None:
        # an attempt ends only where the diagram lets a sending message go
        settled_from_sending(self.state)


def sent(reply: Reply, refused: str | None) -> Outcome:
    error = f"some recipients were refused: {refused}" if refused else None
    return Outcome(MessageState.SENT, Reason.SENT, reply=str(reply), error=error)


def unknown(what: str) -> Outcome:
    """After the end of data, without a reply that decides: R21 forbids guessing."""
    return Outcome(
        MessageState.UNKNOWN,
        Reason.NO_REPLY,
        error=f"{what}; the server may hold it. It is not resent by itself: "
        "it turns sent when it appears in the Sent folder, or resend it on purpose",
    )


@dataclass(frozen=True)
class Backoff:
    """When a deferred message is tried again: doubling from ``retry_base_seconds`` up to
    ``retry_max_seconds`` (kit.backoff), with jitter of half to one and a half of it, so messages
    deferred together do not come back together."""

    retry: kit_backoff.Backoff

    @classmethod
    def of(cls, base_seconds: float, max_seconds: float) -> Backoff:
        return cls(kit_backoff.Backoff(base_seconds, max_seconds, spread=(0.5, 1.5)))

    def retry_at(self, attempt: int) -> datetime:
        """After the ``attempt``-th attempt (from 1) failed."""
        return datetime.now(UTC) + timedelta(seconds=self.retry.seconds(attempt - 1))

    def deferred(
        self, reason: Reason, attempt: int, error: str | None, reply: str | None = None
    ) -> Outcome:
        return Outcome(
            MessageState.DEFERRED, reason, reply=reply, error=error, retry_at=self.retry_at(attempt)
        )

    def refused(self, stage: str, reply: Reply, attempt: int) -> Outcome:
        """The server refused at ``stage``: for good (5xx) or for now."""
        reason = Reason.refused(stage, reply.code)
        if reply.code >= 500:
            return Outcome(MessageState.FAILED, reason, reply=str(reply), error=str(reply))
        return self.deferred(reason, attempt, str(reply), str(reply))
