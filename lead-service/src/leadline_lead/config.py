"""Lead service settings (environment variables, ``LEADLINE_`` prefix)."""

from __future__ import annotations

from leadline_kit.settings import KitSettings


class Settings(KitSettings):
    # the durable's whole name: one consumer, replicas share it
    consumer_prefix: str = "lead-service"
    consumer_batch_size: int = 500
    # how long an event fetched by a replica that died stays unseen before it is delivered again
    consumer_ack_wait: float = 60.0
