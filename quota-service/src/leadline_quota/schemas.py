"""HTTP models of the quota API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class LimitUsageOut(BaseModel):
    limit: str
    maximum: int
    # None for static limits (checked per message, nothing to count)
    used: int | None = None
    remaining: int | None = None
    resets_at: datetime | None = None


class AccountQuotaOut(BaseModel):
    account_key: str
    provider: str
    month_start_day: int
    operator_overrides: dict[str, int | None]
    # the company's own limits; only where lower than the layers below do they apply
    tenant_overrides: dict[str, int]
    limits: list[LimitUsageOut]


class QuotaReportOut(BaseModel):
    plan: str
    synced_emails_per_user_per_day: int | None
    synced_emails_today: dict[uuid.UUID, int]
    mailbox_limit: int | None
    mailboxes_granted: int
    mailboxes_pending: int
    accounts: list[AccountQuotaOut]
    next_cursor: str | None = None


class PresetOut(BaseModel):
    provider: str
    label: str
    aliases: list[str]
    limits: dict[str, int]


class PlanOut(BaseModel):
    plan: str
    label: str
    synced_emails_per_user_per_day: int | None


class PresetsOut(BaseModel):
    limit_names: list[str]
    custom: PresetOut
    providers: list[PresetOut]
    plans: list[PlanOut]


class ReservationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_key: str = Field(examples=["smtp:6f1c2b9e-3f4e-4c55-9d0e-0a9f7d6b1c2a"])
    provider: str = "custom"
    # a batch of ``messages`` messages: ``recipients`` in all, ``size_bytes`` and
    # ``largest_recipients`` of its largest message (None: ``recipients``, one message)
    # strict: a JSON true is no count of anything
    recipients: int = Field(ge=1, strict=True)
    size_bytes: int = Field(ge=0, strict=True)
    messages: int = Field(1, ge=1, strict=True)
    largest_recipients: int | None = Field(None, ge=1, strict=True)
    ttl_seconds: int = Field(600, ge=1, le=86400, strict=True)
    overrides: dict[str, StrictInt] = {}
    month_start_day: int | None = Field(None, ge=1, le=31, strict=True)


class ReservationOut(BaseModel):
    reservation_id: uuid.UUID
    expires_at: datetime


class CommitIn(BaseModel):
    """The part of a batch reservation that was used (None: all that was reserved)."""

    model_config = ConfigDict(extra="forbid")

    messages: int | None = Field(None, ge=1, strict=True)
    recipients: int | None = Field(None, ge=1, strict=True)


class SettlementOut(BaseModel):
    ok: bool
    detail: str = ""


class TenantLimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # limit name → value, at most what the preset (and the operator) allow; the whole set is
    # replaced
    overrides: dict[str, StrictInt] = {}


class AccountOverridesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # limit name → value; null lifts that limit; the whole set is replaced
    overrides: dict[str, StrictInt | None] = {}
    provider: str | None = None
    month_start_day: int | None = Field(None, ge=1, le=31, strict=True)


class PlanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: str
