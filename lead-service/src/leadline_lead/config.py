"""Lead service settings (environment variables, ``LEADLINE_`` prefix)."""

from __future__ import annotations

from datetime import datetime

from leadline_kit.settings import KitSettings


class Settings(KitSettings):
    # one durable consumer per deployment: replicas share it and split the work
    consumer_durable: str = "lead-service"
    consumer_batch_size: int = 500
    # how long an event fetched by a replica that died stays unseen before it is delivered again
    consumer_ack_wait: float = 60.0
    # a new durable starts at the beginning of the stream; this starts it at a time instead (tests
    # sharing one stream with every other service's tests)
    consumer_deliver_since: datetime | None = None
