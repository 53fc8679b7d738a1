"""The quota service's clock: every decision reads it, never the database's ``now()``.

Injected into ``create_app`` so that tests can move time by hand (``MovableClock``)
across rolling windows, month starts and reservation expiry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class QuotaContext:
    """What the quota service's endpoints and consumers reach through ``Runtime.context``."""

    clock: Clock


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class MovableClock:
    """A clock that stands still until moved."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, moment: datetime) -> datetime:
        self.now = moment
        return self.now
