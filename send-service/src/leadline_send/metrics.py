"""Prometheus metrics of the send service (served by the kit at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

QUEUE_DEPTH = Gauge("leadline_send_messages", "Outgoing messages per state still in motion "
                    "(queued, sending, deferred, unknown)", ["state"])
SMTP_REPLIES = Counter("leadline_send_smtp_replies_total", "SMTP replies to DATA/RCPT/MAIL by class",
                       ["stage", "reply_class"])
RETRIES = Counter("leadline_send_retries_total", "Messages put back to wait for another attempt", ["reason"])
SMTP_SECONDS = Histogram("leadline_send_smtp_seconds", "MAIL FROM to the reply after the final '.'",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 600))
DELIVERY_SECONDS = Histogram("leadline_send_delivery_seconds", "From queued to accepted by the SMTP server",
                             buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600))
OUTCOMES = Counter("leadline_send_outcomes_total", "Attempts by outcome", ["outcome"])
