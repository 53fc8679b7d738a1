"""Exponential backoff with jitter, written once; each use is an instance named for its purpose.

The n-th retry in a row (n from 0) waits ``min(cap, base * 2**n)`` seconds times a jitter drawn
uniformly from ``spread`` (by default [0.5, 1)), so that many clients that failed together (every
mailbox of a restarted IMAP server, every consumer of a database that came back) do not retry in
step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_DOUBLINGS = 64  # past this the cap has long applied; keeps 2**n a small float


@dataclass(frozen=True)
class Backoff:
    base: float
    cap: float
    spread: tuple[float, float] = (0.5, 1.0)

    def seconds(self, failures: int, jitter: float | None = None) -> float:
        """The wait before the retry after ``failures`` failures in a row less one (0: the first
        retry).

        ``jitter`` fixes the random factor, for two waits that must move together (a test, or one
        draw shared by a host's pause and the mailbox that hit it)."""
        factor = random.uniform(*self.spread) if jitter is None else jitter  # noqa: S311 - spreading, not a secret
        return min(self.cap, self.base * 2.0 ** min(max(failures, 0), MAX_DOUBLINGS)) * factor

    def draw(self) -> float:
        """One jitter factor from ``spread``, for ``seconds(..., jitter=)``."""
        return random.uniform(*self.spread)  # noqa: S311
