"""Lead API models."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from leadline_kit.text import ONE_LINE

Stage = Literal["new", "contacted", "qualified", "proposal", "negotiation", "won", "lost"]
STAGES: tuple[str, ...] = (
    "new",
    "contacted",
    "qualified",
    "proposal",
    "negotiation",
    "won",
    "lost",
)

MAX_ADDRESSES = 20

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=ONE_LINE)
]
AccountName = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=200, pattern=ONE_LINE)
]
RawAddress = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3, max_length=254, pattern=ONE_LINE)
]


class LeadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    addresses: list[RawAddress] = Field(min_length=1, max_length=MAX_ADDRESSES)
    account_name: AccountName = ""
    owner_user_id: uuid.UUID | None = Field(None, description="defaults to the caller")
    stage: Stage = "new"


class LeadUpdate(BaseModel):
    """Only the fields present change; ``addresses`` replaces the whole list."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    addresses: list[RawAddress] | None = Field(None, min_length=1, max_length=MAX_ADDRESSES)
    account_name: AccountName | None = None
    owner_user_id: uuid.UUID | None = None
    stage: Stage | None = None


class MailStatus(StrEnum):
    """Whether the lead may be mailed, derived from its timestamps
    (``leads.service.mail_status``)."""

    OK = "ok"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"


class Lead(BaseModel):
    id: uuid.UUID
    name: str
    addresses: list[str]
    account_name: str
    owner_user_id: uuid.UUID | None
    stage: Stage
    unsubscribed: bool
    unsubscribed_at: datetime | None
    # what a CRM needs to stop mailing the lead: complained wins over bounced, bounced over
    # unsubscribed
    mail_status: MailStatus
    bounced_at: datetime | None
    complained_at: datetime | None
    created_at: datetime
    updated_at: datetime
