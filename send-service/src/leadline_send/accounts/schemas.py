"""API models of company SMTP accounts (R15; fields from seeds 003 and 004)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AccountType = Literal["campaigns", "customer_service", "system"]
TlsMode = Literal["implicit", "starttls", "plain"]
MAX_INTEGER = 2**31 - 1  # the columns are PostgreSQL integers


class Utm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    utm_source: str | None = Field(None, max_length=200)
    utm_medium: str | None = Field(None, max_length=200)
    utm_campaign: str | None = Field(None, max_length=200)
    utm_term: str | None = Field(None, max_length=200)
    utm_content: str | None = Field(None, max_length=200)


class SmtpAccountFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    type: AccountType | None = None
    host: str | None = Field(None, min_length=1, max_length=253)
    port: int | None = Field(None, ge=1, le=65535, strict=True)
    tls: TlsMode | None = Field(
        None,
        description="implicit = SSL/TLS from the start; starttls = STARTTLS "
        "required; plain only where the operator allows it",
    )
    pinned_sha256: str | None = Field(
        None, description="self-signed certificate: its SHA-256 fingerprint"
    )
    username: str | None = Field(None, max_length=320)
    password: str | None = Field(None, max_length=1000)
    from_email: str | None = None
    from_name: str | None = Field(None, max_length=200)
    active: bool | None = Field(None, strict=True)  # 0 is not false, "8" is not 8
    timeout_seconds: int | None = Field(None, ge=1, le=600, strict=True)
    default_cc: list[str] | None = Field(None, max_length=20)
    default_bcc: list[str] | None = Field(None, max_length=20)
    max_per_month: int | None = Field(None, ge=1, le=MAX_INTEGER, strict=True)
    month_start_day: int | None = Field(None, ge=1, le=28, strict=True)
    # a header line holds at most 998 characters (RFC 5322): the URL goes out on one
    unsubscribe_url: str | None = Field(None, max_length=900)
    precedence: Literal["bulk", "list", "junk"] | None = None
    return_path: str | None = None
    utm: Utm | None = None
    display_order: int | None = Field(None, ge=-MAX_INTEGER - 1, le=MAX_INTEGER, strict=True)


class SmtpAccountIn(SmtpAccountFields):
    name: str = Field(min_length=1, max_length=200)
    type: AccountType = "campaigns"
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(587, ge=1, le=65535, strict=True)
    tls: TlsMode = "starttls"
    from_email: str


class SmtpAccountOut(BaseModel):
    id: uuid.UUID
    name: str
    type: AccountType
    host: str
    port: int
    tls: TlsMode
    pinned_sha256: str | None
    username: str
    has_password: bool
    from_email: str
    from_name: str
    active: bool
    confirmed: bool
    timeout_seconds: int
    default_cc: list[str]
    default_bcc: list[str]
    max_per_month: int | None
    month_start_day: int
    unsubscribe_url: str | None
    precedence: str | None
    return_path: str | None
    utm: Utm
    display_order: int
    # set: the account does not send; what went wrong and how to fix it
    error: str | None
    error_at: datetime | None
    created_at: datetime
    updated_at: datetime


class TestEmailIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str


class ConfirmIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=20)


class ConnectionTest(BaseModel):
    reachable: bool
    detail: str = ""
