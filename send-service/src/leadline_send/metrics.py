"""Prometheus metrics of the send service (served by the kit at /metrics)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

QUEUE_DEPTH = Gauge(
    "leadline_send_messages",
    "Outgoing messages per state still in motion (queued, sending, deferred, unknown)",
    ["state"],
)
SMTP_REPLIES = Counter(
    "leadline_send_smtp_replies_total",
    "SMTP replies to DATA/RCPT/MAIL by class",
    ["stage", "reply_class"],
)
RETRIES = Counter(
    "leadline_send_retries_total", "Messages put back to wait for another attempt", ["reason"]
)
SMTP_SECONDS = Histogram(
    "leadline_send_smtp_seconds",
    "MAIL FROM to the reply after the final '.'",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 600),
)
DELIVERY_SECONDS = Histogram(
    "leadline_send_delivery_seconds",
    "From queued to accepted by the SMTP server",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600),
)
OUTCOMES = Counter("leadline_send_outcomes_total", "Attempts by outcome", ["outcome"])
STAGE_SECONDS = Histogram(
    "leadline_send_stage_seconds",
    (
        "Time of each step of a message's path: the API's (api-*), delivery's and the Sent copy's "
        "(per APPEND batch)"
    ),
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage).observe(time.perf_counter() - started)
