"""Request/reply schemas (NATS core request with a timeout)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

from leadline_proto.events import MailboxStatus


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")


class QuotaReserveRequest(Request):
    """Reserve one message, or a sender's batch of ``messages`` messages of one account (all or
    nothing).

    For a batch, ``recipients`` is the total over its messages, ``size_bytes`` the size of the
    largest message and ``largest_recipients`` the recipients of the message with the most; limits
    on one message (size, recipients per message) are checked against those.
    """

    company_id: uuid.UUID
    account_key: str  # "mailbox:<uuid>" or "smtp:<uuid>"
    provider: str = "custom"
    recipients: int
    size_bytes: int
    messages: int = 1
    largest_recipients: int | None = None  # None: ``recipients`` (one message)
    # chosen by the sender, so that it can record the reservation as its own before asking (and
    # settle it after a crash); a reserve naming an id already granted answers with that grant again
    reservation_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    ttl_seconds: int = 600
    # account settings that override the provider preset field by field (e.g. a company SMTP
    # account's max per month), keyed by limit name as in the quota service's presets file
    overrides: dict[str, int] = {}
    month_start_day: int | None = None


class QuotaReserveReply(Reply):
    granted: bool
    reservation_id: uuid.UUID | None = None
    limit: str | None = None
    retry_at: datetime | None = None
    detail: str = ""
    # a check that passed: what the account's windows would still have after the asked messages, in
    # messages (the tightest limit counted in messages) and in recipients (the tightest counted in
    # recipients); None when no limit counts that measure.  A sender may answer its next checks from
    # it.
    room_messages: int | None = None
    room_recipients: int | None = None


class QuotaSettleRequest(Request):
    """Commit or release a reservation (the subject says which).

    A commit may name the part of a batch reservation that was used (``messages`` and
    ``recipients``, at least 1 and at most what was reserved): only that counts, the rest is given
    back.  None commits the whole reservation.
    """

    company_id: uuid.UUID
    reservation_id: uuid.UUID
    messages: int | None = None
    recipients: int | None = None


class QuotaSettleReply(Reply):
    ok: bool
    detail: str = ""


class MailboxSlotRequest(Request):
    company_id: uuid.UUID
    mailbox_id: uuid.UUID


class MailboxSlotStatus(StrEnum):
    GRANTED = "granted"
    PENDING = "pending"  # in the company's queue for a free slot (``position``)
    RELEASED = "released"
    INVALID = "invalid"  # the request could not be read (``detail`` says why); nothing changed


class MailboxSlotReply(Reply):
    status: MailboxSlotStatus
    position: int | None = None
    detail: str = ""


class SyncAllowanceRequest(Request):
    """The sync service asks how many of ``count`` newly synced emails the company's plan allows."""

    company_id: uuid.UUID
    user_id: uuid.UUID
    count: int


class SyncAllowanceReply(Reply):
    allowed: int  # how many of the asked count may be stored now (they are counted as used)
    resets_at: datetime | None = None  # when the allowance renews; None when the plan has no limit
    detail: str = ""


class LeadDirectoryRequest(Request):
    """The sync service asks, before a historical sync, how many leads with addresses a company
    has."""

    company_id: uuid.UUID


class LeadDirectoryReply(Reply):
    """What the lead service holds for the company when it answers (``as_of``, its clock).

    ``leads`` counts the leads that have at least one address (only those can match mail);
    ``newest_created_at`` is the creation time of the newest of them.  The asker waits until its own
    copy, built from ``lead.*`` events, holds as many leads created up to ``as_of``.
    """

    leads: int
    newest_created_at: datetime | None = None
    as_of: datetime | None = None  # None: the request could not be read (``detail`` says why)
    detail: str = ""


class MessageTimelineRequest(Request):
    """The sync service asks which leads' timelines hold a message ("why is this mail not on the
    timeline?")."""

    company_id: uuid.UUID
    message_id: str  # as in the mail's header, brackets included


class MessageTimelineEntry(BaseModel):
    lead_id: uuid.UUID
    kind: str  # email_received, email_sent, smart_mail_sent, ...
    occurred_at: datetime
    sources: list[str]  # mailbox ids (or "smart_mail", ...) that brought it


class MessageTimelineReply(Reply):
    """The timeline events of the company with that Message-ID (none: on no lead's timeline)."""

    entries: list[MessageTimelineEntry] = []
    detail: str = ""  # the request could not be read


class MailboxSmtpRequest(Request):
    """Send-service asks sync-service for a user's SMTP settings (decrypted, over the internal
    bus)."""

    company_id: uuid.UUID
    user_id: uuid.UUID


class MailboxSmtpReply(Reply):
    found: bool
    mailbox_id: uuid.UUID | None = None
    status: MailboxStatus | None = None
    address: str | None = None
    provider: str | None = None
    smtp_use: Literal["general", "all"] | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_tls: Literal["implicit", "starttls", "plain"] | None = None
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_pinned_sha256: str | None = None
    imap_host: str | None = None
    imap_port: int | None = None
    imap_tls: Literal["implicit", "starttls", "plain"] | None = None
    imap_username: str | None = None
    imap_password: str | None = None
    imap_pinned_sha256: str | None = None
    sent_folder: str | None = None
    provider_saves_sent: bool = False
    # "oauth2": sign in to SMTP (and IMAP, for the Sent copy) with ``access_token`` by XOAUTH2
    # instead of the passwords; the token is live for at least a few minutes (the refresh token
    # never leaves the sync service)
    auth: Literal["password", "oauth2"] = "password"
    access_token: str | None = None


class LeadAddressesRequest(Request):
    """The send service asks for leads it has not heard of yet (their ``lead.created`` is on its
    way): a lead created through the API can be mailed by the very next request."""

    company_id: uuid.UUID
    lead_ids: list[uuid.UUID]


class LeadAddresses(Reply):
    lead_id: uuid.UUID
    name: str
    addresses: list[str]  # normalised, first the lead's primary address


class LeadAddressesReply(Reply):
    """The company's leads among the asked ones; a lead not listed does not exist (in that
    company)."""

    leads: list[LeadAddresses] = []
    detail: str = ""  # why the request could not be read, when it could not
