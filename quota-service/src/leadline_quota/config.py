"""Quota-service settings (environment variables with the ``LEADLINE_`` prefix)."""

from __future__ import annotations

from leadline_kit.settings import KitSettings


class Settings(KitSettings):
    # requests answered at once per RPC subject; more wait in NATS (keep near the database pool)
    responder_concurrency: int = 20
    # how often reservations that count in no window any more are deleted
    prune_interval_seconds: float = 300.0
    # the durable's whole name (company.updated / mailbox.disconnected), shared by all processes
    consumer_prefix: str = "quota-mailbox-limit"
