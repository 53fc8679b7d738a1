"""Gateway settings: bootstrap token, where the services are, API limits, the system mailer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from leadline_kit.settings import KitSettings

DEV_BOOTSTRAP_TOKEN = "dev-only-bootstrap-token"  # noqa: S105 - refused outside development
MIN_OPERATOR_TOKEN_LENGTH = 32


class Settings(KitSettings):
    bootstrap_token: SecretStr = SecretStr(DEV_BOOTSTRAP_TOKEN)
    # the operator's bearer token for /v1/operator/ (raising limits, plans); unset: no operator API
    operator_token: SecretStr | None = None
    lead_url: str = "http://127.0.0.1:8101"
    quota_url: str = "http://127.0.0.1:8102"
    sync_url: str = "http://127.0.0.1:8103"
    send_url: str = "http://127.0.0.1:8104"
    # per API key token bucket, per gateway process: a CRM's burst of 1,000 single sends passes,
    # then 200/s (what Nylas allows per account); sending limits are the quota service's (README,
    # Settings)
    rate_limit_per_second: float = 200.0
    rate_limit_burst: int = 1000
    # the bearer token Prometheus sends for the gateway's /metrics; unset: /metrics is not served
    # (404)
    metrics_token: SecretStr | None = None
    # API keys a user may hold at once (not revoked, not expired)
    api_keys_per_user: int = Field(20, ge=1, le=1000)
    upstream_connect_timeout: float = 2.0
    upstream_timeout: float = 60.0
    upstream_pool_size: int = 200
    # the system mailer, through which invitation codes reach the invitee (R29); unset: no
    # invitations
    mailer_host: str | None = None
    mailer_port: int = Field(587, ge=1, le=65535)
    # "starttls" (required, refused when not offered), "tls" (implicit), "none" (plain: an
    # operator's choice)
    mailer_tls: Literal["starttls", "tls", "none"] = "starttls"
    mailer_username: str | None = None
    mailer_password: SecretStr | None = None
    mailer_from: str = "Leadline <no-reply@localhost>"
    mailer_ca_file: str | None = None
    mailer_timeout: float = 30.0
    invitation_hours: float = Field(72.0, gt=0, le=24 * 30)

    @model_validator(mode="after")
    def _no_default_bootstrap_in_production(self) -> Settings:
        if (
            self.environment == "production"
            and self.bootstrap_token.get_secret_value() == DEV_BOOTSTRAP_TOKEN
        ):
            raise ValueError("LEADLINE_BOOTSTRAP_TOKEN must be set outside development")
        if self.operator_token is not None:
            token = self.operator_token.get_secret_value()
            if len(token) < MIN_OPERATOR_TOKEN_LENGTH:
                raise ValueError(
                    f"LEADLINE_OPERATOR_TOKEN must be at least {MIN_OPERATOR_TOKEN_LENGTH} "
                    f"characters"
                )
            if token == self.bootstrap_token.get_secret_value():
                raise ValueError(
                    "LEADLINE_OPERATOR_TOKEN must differ from LEADLINE_BOOTSTRAP_TOKEN"
                )
        return self

    def routes(self) -> list[tuple[str, str]]:
        """Public path prefix → upstream service base URL (longest prefix first)."""
        return [
            ("/v1/leads", self.lead_url),
            ("/v1/blocklist", self.lead_url),
            ("/v1/reports", self.lead_url),
            ("/v1/quotas", self.quota_url),
            ("/v1/operator/quotas", self.quota_url),
            ("/v1/mail-sync", self.sync_url),
            ("/v1/mail-sync/oauth/callback", self.sync_url),
            ("/v1/mailboxes", self.sync_url),
            ("/v1/smtp-accounts", self.send_url),
            ("/v1/messages", self.send_url),
            ("/v1/unsubscribe", self.send_url),
        ]

    def services(self) -> dict[str, str]:
        return {
            "lead": self.lead_url,
            "quota": self.quota_url,
            "sync": self.sync_url,
            "send": self.send_url,
        }
