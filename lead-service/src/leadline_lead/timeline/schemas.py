"""Timeline API models."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel

TimelineKind = Literal[
    "email_received", "email_sent", "smart_mail_sent", "bounce", "delivery_delayed", "complaint"
]


class TimelineSource(BaseModel):
    """One way the event reached the lead: a synced mailbox, Smart Mail, or a bounce notice."""

    kind: Literal["mailbox", "smart_mail", "bounce_notice", "sync"]
    mailbox_id: uuid.UUID | None = None


class TimelineEvent(BaseModel):
    id: int
    kind: TimelineKind
    category: Literal["personal", "marketing"]
    occurred_at: datetime
    direction: Literal["inbound", "outbound"]
    from_address: str
    from_name: str
    to: list[str]
    cc: list[str]
    subject: str
    snippet: str
    message_id: str
    mailbox_id: uuid.UUID | None
    user_id: uuid.UUID | None
    folder: str | None
    bounced: bool
    bounced_at: datetime | None
    bounce_recipient: str | None
    bounce_status: str | None
    bounce_diagnostic: str | None
    sources: list[TimelineSource]


class Timeline(BaseModel):
    """At most the 300 most recent events, newest first (R7)."""

    items: list[TimelineEvent]
