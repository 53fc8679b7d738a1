"""kit.backoff: doubling from the base, capped, spread by the jitter."""

from __future__ import annotations

from leadline_kit.backoff import Backoff


def test_waits_double_up_to_the_cap_and_spread_within_the_jitter() -> None:
    retry = Backoff(0.5, 8.0)
    assert [retry.seconds(n, jitter=1.0) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert retry.seconds(-3, jitter=1.0) == 0.5 and retry.seconds(10**6, jitter=1.0) == 8.0
    waits = [retry.seconds(2) for _ in range(200)]
    assert all(1.0 <= w <= 2.0 for w in waits) and len(set(waits)) > 100
    wide = Backoff(1.0, 60.0, spread=(0.5, 1.5))
    assert all(0.5 <= wide.seconds(0) <= 1.5 for _ in range(100))
