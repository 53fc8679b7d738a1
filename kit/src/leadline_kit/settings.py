"""One settings base for every service: environment variables, refused defaults outside
development."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_IDENTITY_SECRET = "dev-only-identity-secret-change-me"  # noqa: S105 - refused outside development


class KitSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADLINE_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:55432/leadline",
        validation_alias=AliasChoices("DATABASE_URL", "LEADLINE_DATABASE_URL"),
    )
    nats_url: str = Field(
        "nats://127.0.0.1:54222", validation_alias=AliasChoices("NATS_URL", "LEADLINE_NATS_URL")
    )
    identity_secret: SecretStr = SecretStr(DEV_IDENTITY_SECRET)
    log_level: str = "INFO"
    db_pool_size: int = 10
    # False: this process writes events to the outbox but publishes none; the relays of the
    # service's other processes do, woken by NOTIFY (outbox.RelayWaker).  At least one process must
    # relay.
    outbox_relay: bool = True
    # Durable JetStream consumer names start with this (the service's replicas share them; a test
    # app or benchmark sharing one stream with others takes its own).  Each service sets its
    # default.
    consumer_prefix: str = "leadline"
    # a new durable starts at the beginning of the stream; this starts it at a time instead (tests
    # sharing one stream with every other service's tests)
    consumer_deliver_since: datetime | None = None
    # how long a NATS request to another service waits for its answer (kit.rpc.ask)
    rpc_timeout_seconds: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> KitSettings:
        if (
            self.environment == "production"
            and self.identity_secret.get_secret_value() == DEV_IDENTITY_SECRET
        ):
            raise ValueError("LEADLINE_IDENTITY_SECRET must be set outside development")
        return self
