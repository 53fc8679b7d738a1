"""Send-service settings (environment variables with the ``LEADLINE_`` prefix)."""

from __future__ import annotations

from pydantic import SecretStr, model_validator

from leadline_kit.settings import KitSettings

DEV_CREDENTIAL_KEY = "dev:" + "0" * 64
DEV_UNSUBSCRIBE_SECRET = "dev-only-unsubscribe-secret"  # noqa: S105 - refused outside development


class Settings(KitSettings):
    # Message-IDs are made at this domain: <uuid@message_domain>
    message_domain: str = "leadline.localhost"
    # where recipients reach the public one-click unsubscribe endpoint (through the gateway);
    # receivers offer one-click unsubscribe only for an https URI (RFC 8058)
    public_base_url: str = "http://127.0.0.1:8100"
    unsubscribe_secret: SecretStr = SecretStr(DEV_UNSUBSCRIBE_SECRET)
    # key-encryption keys "kid:64 hex digits", comma separated; the first one seals new credentials
    credential_keys: SecretStr = SecretStr(DEV_CREDENTIAL_KEY)
    # R24 operator allow-list for SMTP/IMAP hosts on non-public networks (tests: "127.0.0.0/8")
    mail_allow_networks: str = ""
    # R22: plaintext SMTP (no TLS at all) only when the operator allows it
    smtp_allow_plaintext: bool = False
    # extra CA bundle trusted for SMTP/IMAP certificates (tests, private CAs)
    mail_cafile: str | None = None
    # A request to POST /v1/messages holds its connection while it asks the quota service: with
    # fewer pooled connections than concurrent requests, the pool opens and closes a connection per
    # request.
    db_pool_size: int = 24
    # delivery workers in this process; each holds at most one SMTP connection
    smtp_connections: int = 8
    # messages a worker claims at once
    claim_size: int = 16
    # quota is reserved for this many messages of one account in one ask (a lease), and what a claim
    # did not need serves the worker's next claims for up to quota_lease_seconds.  A reservation
    # takes the quota service a durable commit (milliseconds): for 16 messages it was a third of the
    # time one connection spent per message.  Only what reached the server is committed.
    quota_lease_messages: int = 64
    quota_lease_seconds: float = 2.0
    # a new connection once this many recipients went over one (R14 "recipients per SMTP
    # connection")
    recipients_per_connection: int = 100
    # RFC 5321 4.5.3.2.6: wait up to 10 minutes for the reply to the final "."
    data_timeout_seconds: float = 600.0
    max_message_bytes: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_attempts: int = 8
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 3600.0
    # how long a delivery worker sleeps when the queue is empty and no wake-up came
    queue_poll_seconds: float = 0.5
    recovery_interval_seconds: float = 5.0
    # on shutdown, how long the workers may finish the messages in hand before they are cut off
    stop_grace_seconds: float = 20.0
    consumer_prefix: str = "send"

    @model_validator(mode="after")
    def _no_default_send_secrets_in_production(self) -> Settings:
        if self.environment == "production" and (
            self.credential_keys.get_secret_value() == DEV_CREDENTIAL_KEY
            or self.unsubscribe_secret.get_secret_value() == DEV_UNSUBSCRIBE_SECRET
        ):
            raise ValueError(
                "LEADLINE_CREDENTIAL_KEYS and LEADLINE_UNSUBSCRIBE_SECRET must be set outside "
                "development"
            )
        return self
