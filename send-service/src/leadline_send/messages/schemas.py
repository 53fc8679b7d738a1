"""API models of Smart Mail messages."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from leadline_send.states import MessageState

Category = Literal["personal", "marketing"]
MAX_BATCH = 100


class AttachmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field(
        "application/octet-stream", pattern=r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$"
    )
    content_base64: str


class MessageIn(BaseModel):
    """One message.  Address leads by id (their first address) or give addresses directly."""

    model_config = ConfigDict(extra="forbid")

    category: Category = "personal"
    lead_ids: list[uuid.UUID] = Field(default_factory=list, max_length=1000)
    to: list[str] = Field(default_factory=list, max_length=1000)
    cc: list[str] = Field(default_factory=list, max_length=1000)
    bcc: list[str] = Field(default_factory=list, max_length=1000)
    subject: str = Field("", max_length=2000)
    text: str | None = None
    html: str | None = None
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=100)


class BatchMessageIn(MessageIn):
    """One message of a batch, with its own idempotency key (as the header is for one message)."""

    idempotency_key: str | None = None


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[BatchMessageIn] = Field(min_length=1, max_length=MAX_BATCH)


class DeliveryNotice(BaseModel):
    """The last delivery notice that came back for the message (R17): ``hard`` marked it bounced,
    ``soft`` says delivery is delayed (the message stays ``sent``)."""

    severity: Literal["hard", "soft"]
    status: str
    reason: str
    recipient: str | None
    diagnostic: str
    received_at: datetime


class MessageOut(BaseModel):
    id: uuid.UUID
    state: MessageState
    category: Category
    message_id: str
    user_id: uuid.UUID
    from_address: str
    recipients: list[str]
    lead_ids: list[uuid.UUID]
    subject: str
    size_bytes: int
    account: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    smtp_reply: str | None
    sent_copy: str | None
    delivery_notice: DeliveryNotice | None = None
    sent_at: datetime | None
    created_at: datetime
    updated_at: datetime


class BatchOut(BaseModel):
    items: list[MessageOut]
