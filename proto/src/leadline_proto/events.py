"""Versioned event schemas shared by every Leadline service.

Every event travels as one JSON document, the envelope: ``event_id`` (also the
JetStream ``Nats-Msg-Id``), ``type`` and ``version`` (which together pick the
payload schema and the subject ``leadline.<type>.v<version>``), ``occurred_at``,
``company_id``, ``correlation_id`` and ``payload``.  Additive payload fields
stay in a version; a breaking change makes a new model with ``version: 2``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def utcnow() -> datetime:
    return datetime.now(UTC)


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    version: int
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=utcnow)
    company_id: uuid.UUID
    correlation_id: str | None = None

    @property
    def subject(self) -> str:
        return f"leadline.{self.type}.v{self.version}"


# --- company / users (gateway) -------------------------------------------------


class CompanyPayload(Payload):
    name: str
    domains: list[str] = []
    block_own_domains: bool = True
    mailbox_limit: int | None = None


class CompanyUpdatedV1(EventBase):
    """A company was created or its settings changed (full state, not a diff)."""

    type: Literal["company.updated"] = "company.updated"
    version: Literal[1] = 1
    payload: CompanyPayload


class UserPayload(Payload):
    user_id: uuid.UUID
    email: str
    name: str = ""
    role: str


class UserUpdatedV1(EventBase):
    type: Literal["user.updated"] = "user.updated"
    version: Literal[1] = 1
    payload: UserPayload


class UserDeletedV1(EventBase):
    type: Literal["user.deleted"] = "user.deleted"
    version: Literal[1] = 1
    payload: UserPayload


# --- leads and blocklist (lead-service) ----------------------------------------


class LeadPayload(Payload):
    lead_id: uuid.UUID
    name: str = ""
    addresses: list[str]
    stage: str | None = None
    owner_user_id: uuid.UUID | None = None
    created_at: datetime


class LeadCreatedV1(EventBase):
    type: Literal["lead.created"] = "lead.created"
    version: Literal[1] = 1
    payload: LeadPayload


class LeadUpdatedV1(EventBase):
    type: Literal["lead.updated"] = "lead.updated"
    version: Literal[1] = 1
    payload: LeadPayload


class LeadDeletedV1(EventBase):
    type: Literal["lead.deleted"] = "lead.deleted"
    version: Literal[1] = 1
    payload: LeadPayload


class BlocklistEntryPayload(Payload):
    entry_id: uuid.UUID
    kind: Literal["address", "domain"]
    value: str


class BlocklistAddedV1(EventBase):
    type: Literal["blocklist.added"] = "blocklist.added"
    version: Literal[1] = 1
    payload: BlocklistEntryPayload


class BlocklistRemovedV1(EventBase):
    type: Literal["blocklist.removed"] = "blocklist.removed"
    version: Literal[1] = 1
    payload: BlocklistEntryPayload


class LeadUnsubscribedPayload(Payload):
    address: str
    lead_id: uuid.UUID | None = None


class LeadUnsubscribedV1(EventBase):
    """A recipient used the one-click unsubscribe of a marketing mail (R16)."""

    type: Literal["lead.unsubscribed"] = "lead.unsubscribed"
    version: Literal[1] = 1
    payload: LeadUnsubscribedPayload


# --- mail (sync-service, send-service) ------------------------------------------


class Attachment(Payload):
    filename: str | None
    content_type: str
    size: int


class MailPayload(Payload):
    """One email as the timeline needs it; addresses are normalised (lower-case, IDNA domain)."""

    message_id: str
    mailbox_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    folder: Literal["inbox", "sent"] | None = None
    direction: Literal["inbound", "outbound"]
    from_address: str
    from_name: str = ""
    to: list[str] = []
    cc: list[str] = []
    subject: str = ""
    sent_at: datetime
    # the body's text; in mail.synced only its start, as much as the timeline's preview reads (4,000
    # characters): the synced body stays in the mailbox
    text: str = ""
    # the HTML part; in mail.synced only when the text is empty (its first 64 KB)
    html: str | None = None
    attachments: list[Attachment] = []
    in_reply_to: str | None = None
    defect: bool = False


class MailSyncedV1(EventBase):
    """A message to or from a lead was found in a synced Inbox or Sent folder."""

    type: Literal["mail.synced"] = "mail.synced"
    version: Literal[1] = 1
    payload: MailPayload


class MailSentPayload(MailPayload):
    outgoing_message_id: uuid.UUID
    category: Literal["personal", "marketing"] = "personal"
    smtp_account_id: uuid.UUID | None = None


class MailSentV1(EventBase):
    """Smart Mail accepted by the SMTP server (R12)."""

    type: Literal["mail.sent"] = "mail.sent"
    version: Literal[1] = 1
    payload: MailSentPayload


BounceSeverity = Literal["hard", "soft"]
BounceReason = Literal[
    "user_unknown",
    "mailbox_full",
    "host_unknown",
    "policy",
    "spam",
    "message_too_large",
    "expired",
    "other",
]


class MailBouncedPayload(Payload):
    """A delivery notice about one of the sender's messages (R17).

    ``recipient`` is the lead that failed, or ``""`` when the notice names no lead but returns the
    original's Message-ID: whoever sent that message knows its recipients.  ``severity`` ``hard``
    (5.x.x: the message will not arrive) marks the message bounced; ``soft`` (4.x.x, ``Action:
    delayed``) only tells that delivery is delayed.
    """

    original_message_id: str
    recipient: str
    status: str = ""
    action: str = "failed"
    diagnostic: str = ""
    mailbox_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    bounced_at: datetime
    severity: BounceSeverity = "hard"
    reason: BounceReason = "other"


class MailBouncedV1(EventBase):
    type: Literal["mail.bounced"] = "mail.bounced"
    version: Literal[1] = 1
    payload: MailBouncedPayload


ComplaintFeedbackType = Literal["abuse", "fraud", "opt-out", "other"]


class MailComplainedPayload(Payload):
    """A recipient reported one of the sender's messages through a feedback channel (RFC 5965 ARF, a
    provider's report): as spam (``abuse``, ``fraud``, ``other``) or asking off the list
    (``opt-out``). Either way the lead gets no more marketing mail.

    ``recipient`` is the lead who complained, or ``""`` when the report names no lead (providers
    often redact it) but returns the original's Message-ID: whoever sent that message knows its
    recipients.
    """

    original_message_id: str
    recipient: str
    feedback_type: ComplaintFeedbackType = "abuse"
    reporter: str = ""  # who sent the report, e.g. "Yahoo!-Mail-Feedback/2.0"
    mailbox_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    complained_at: datetime


class MailComplainedV1(EventBase):
    type: Literal["mail.complained"] = "mail.complained"
    version: Literal[1] = 1
    payload: MailComplainedPayload


# --- mailboxes (sync-service) ---------------------------------------------------


class MailboxStatus(StrEnum):
    """A mailbox's status (R8); sync-service's ``mailbox/states.py`` holds the moves between
    them."""

    PENDING = "pending"
    ENABLED = "enabled"
    ERROR = "error"
    CONNECTION_FAILED = "connection_failed"
    DISABLED = "disabled"


class MailboxStatusPayload(Payload):
    mailbox_id: uuid.UUID
    user_id: uuid.UUID
    address: str
    status: MailboxStatus
    previous_status: MailboxStatus | None = None
    reason: str = ""


class MailboxStatusChangedV1(EventBase):
    type: Literal["mailbox.status_changed"] = "mailbox.status_changed"
    version: Literal[1] = 1
    payload: MailboxStatusPayload


class MailboxConnectionPayload(Payload):
    mailbox_id: uuid.UUID
    user_id: uuid.UUID
    address: str
    smtp_use: Literal["general", "all"] = "general"
    provider: str = "custom"
    keep_history: bool = True


class MailboxConnectedV1(EventBase):
    type: Literal["mailbox.connected"] = "mailbox.connected"
    version: Literal[1] = 1
    payload: MailboxConnectionPayload


class MailboxDisconnectedV1(EventBase):
    """Sync was disabled; ``keep_history=False`` asks to remove what it brought (R11)."""

    type: Literal["mailbox.disconnected"] = "mailbox.disconnected"
    version: Literal[1] = 1
    payload: MailboxConnectionPayload


# --- quota (quota-service) ------------------------------------------------------


class QuotaExceededPayload(Payload):
    account_key: str
    limit: str
    retry_at: datetime | None


class QuotaExceededV1(EventBase):
    type: Literal["quota.exceeded"] = "quota.exceeded"
    version: Literal[1] = 1
    payload: QuotaExceededPayload


class MailboxSlotPayload(Payload):
    mailbox_id: uuid.UUID


class MailboxSlotGrantedV1(EventBase):
    """A pending mailbox got a slot of the company mailbox limit (R9)."""

    type: Literal["quota.mailbox_slot_granted"] = "quota.mailbox_slot_granted"
    version: Literal[1] = 1
    payload: MailboxSlotPayload


Event = Annotated[
    CompanyUpdatedV1
    | UserUpdatedV1
    | UserDeletedV1
    | LeadCreatedV1
    | LeadUpdatedV1
    | LeadDeletedV1
    | BlocklistAddedV1
    | BlocklistRemovedV1
    | LeadUnsubscribedV1
    | MailSyncedV1
    | MailSentV1
    | MailBouncedV1
    | MailComplainedV1
    | MailboxStatusChangedV1
    | MailboxConnectedV1
    | MailboxDisconnectedV1
    | QuotaExceededV1
    | MailboxSlotGrantedV1,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: bytes | str) -> Event:
    """Parse one envelope; raises ``pydantic.ValidationError`` on anything invalid."""
    return EVENT_ADAPTER.validate_json(data)
