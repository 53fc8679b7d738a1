"""Per API key token buckets (per gateway process): a steady rate with a burst allowance.

Every answer to a keyed request carries the bucket's state in the RateLimit header fields of the
IETF draft (draft-ietf-httpapi-ratelimit-headers): ``RateLimit-Limit`` (the burst),
``RateLimit-Remaining`` (requests that would pass now) and ``RateLimit-Reset`` (seconds until the
bucket is full again), and ``RateLimit-Policy`` (the burst and the window in which the steady rate
refills it), so that a client can pace itself instead of meeting 429s; a 429 also says
``Retry-After``.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Allowance:
    wait: float  # 0 when the request may pass, else seconds until a token is available
    remaining: int
    reset: int  # seconds until the bucket is full again
    limit: int
    window: int  # seconds in which the steady rate gives a full burst

    def headers(self) -> dict[str, str]:
        found = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
            "RateLimit-Policy": f"{self.limit};w={self.window}",
        }
        if self.wait:
            found["Retry-After"] = str(max(1, math.ceil(self.wait)))
        return found


class RateLimiter:
    def __init__(self, rate_per_second: float, burst: int) -> None:
        self.rate = rate_per_second
        self.burst = float(burst)
        self._buckets: dict[uuid.UUID, tuple[float, float]] = {}

    def take(self, key: uuid.UUID, now: float | None = None) -> Allowance:
        """Take one token if there is one."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        return Allowance(
            wait=wait,
            remaining=int(tokens),
            reset=math.ceil((self.burst - tokens) / self.rate),
            limit=int(self.burst),
            window=max(1, math.ceil(self.burst / self.rate)),
        )
