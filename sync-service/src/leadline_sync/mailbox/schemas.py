"""API models of Mail Sync. Passwords come in as secrets and never go out."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from leadline_mail.addresses import normalize_address
from leadline_mail.net import ErrorKind, normalize_fingerprint
from leadline_sync.mailbox.states import MailboxStatus, SyncMode

SmtpUse = Literal["general", "all"]


def _no_control_characters(value: str) -> str:
    # R22: IMAP arguments and SMTP lines must not carry NUL, CR or LF
    if any(c in value for c in "\0\r\n"):
        raise ValueError("must not contain line breaks or NUL characters")
    return value


class ServerSettingsIn(BaseModel):
    """Custom settings of one server (R3); for a preset only username and password may be given."""

    model_config = ConfigDict(extra="forbid")

    username: str | None = Field(None, max_length=320)
    password: SecretStr | None = Field(None, max_length=1024)
    host: str | None = Field(None, max_length=253)
    port: int | None = Field(None, ge=1, le=65535, strict=True)
    use_ssl: bool | None = Field(None, strict=True)  # 0 is not false
    self_signed: bool = Field(False, strict=True)
    # the SHA-256 fingerprint the user expects (optional): checked against the one seen when
    # connecting
    certificate_sha256: str | None = None

    @field_validator("username", "host")
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return None if value is None else _no_control_characters(value.strip())

    @field_validator("password")
    @classmethod
    def _clean_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _no_control_characters(value.get_secret_value())
        return value

    @field_validator("certificate_sha256")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        return None if value is None else normalize_fingerprint(value)


class ConnectRequest(BaseModel):
    """``PUT /v1/mail-sync`` and ``POST /v1/mail-sync/test``."""

    model_config = ConfigDict(extra="forbid")

    provider: str = "custom"
    address: str = Field(..., max_length=320, description="the email address being synced")
    password: SecretStr | None = Field(
        None, max_length=1024, description="used for IMAP and SMTP unless given there"
    )
    smtp_use: SmtpUse = "general"
    imap: ServerSettingsIn | None = None
    smtp: ServerSettingsIn | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        normalized = normalize_address(value)
        if normalized is None:
            raise ValueError("is not a valid email address")
        return normalized

    @field_validator("password")
    @classmethod
    def _clean_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _no_control_characters(value.get_secret_value())
        return value


class ServerSettingsOut(BaseModel):
    host: str
    port: int
    tls: Literal["implicit", "starttls", "plain"]
    username: str
    self_signed: bool
    certificate_sha256: str | None


class FolderCompleteness(BaseModel):
    """The folder on the server (at the last audit) against what the sync examined; healthy:
    ``missing`` 0."""

    messages_on_server: int | None  # None before the first audit
    examined: int
    lead_mail_stored: int  # on a lead's timeline, damaged ones included
    bounces_stored: int
    # feedback reports about mail to a lead, told to the lead and send services
    complaints_stored: int = 0
    # examined and not stored, by rule: no_lead, blocklisted, own_domain, before_lead, gone,
    # before_audit
    not_stored: dict[str, int]
    unreadable_kept_raw: int  # of the lead mail stored, kept as received (R27)
    not_yet_examined: int | None  # on the server above the cursor (pending)
    # on the server up to the cursor and examined nowhere; None before the first audit
    missing: int | None
    last_audit_at: datetime | None
    last_audit_refetched: int  # never-examined messages the last audit found and examined


class FolderProgress(BaseModel):
    folder: Literal["inbox", "sent"]
    name: str
    last_uid: int
    history_last_uid: int
    # the historical sync examines the folder newest first: UIDs from here up to history_last_uid
    # are done
    history_examined_down_to: int
    history_complete: bool
    completeness: FolderCompleteness | None = None


class MailboxOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    address: str
    provider: str
    auth: Literal["password", "oauth2"]  # oauth2: signed in with the provider, no password saved
    status: MailboxStatus
    status_reason: str
    sync_mode: SyncMode | None = Field(
        description="enabled mailboxes: live (IDLE held) or rotating (served in turns)"
    )
    last_synced_at: datetime | None = Field(
        description="when both folders were last synced to the end"
    )
    smtp_use: SmtpUse
    imap: ServerSettingsOut
    smtp: ServerSettingsOut
    sent_folder: str | None
    connected_at: datetime
    history_completed_at: datetime | None
    # R29: when the address was proven, and how ("message": through the logins; "provider": OAuth2);
    # null for a mailbox connected before proofs existed (proven at its next change of logins)
    address_proven_at: datetime | None
    address_proven_by: Literal["message", "provider"] | None
    folders: list[FolderProgress]


class MessageOutcome(StrEnum):
    """What became of a message in one place of the mailbox (``GET /v1/mail-sync/messages``)."""

    ON_TIMELINE = "on_timeline"  # on the timeline of the leads named
    # published by the sync, but no lead's timeline holds it (or the lead service is silent)
    STORED = "stored"
    REMOVED = "removed"  # sync was disabled with "remove": its timeline events were deleted (R11)
    NOT_STORED = "not_stored"  # examined and left out by a rule (``rule``, ``reason``)
    NOT_EXAMINED_YET = "not_examined_yet"  # above where the sync stands (``sync_position``)
    MISSING = "missing"  # below the cursor and never examined: the next audit examines it
    NOT_SYNCED_FOLDER = "not_synced_folder"  # in a folder the sync does not read (R4)
    NOT_ON_SERVER = "not_on_server"  # in no folder of the server
    # nothing recorded, and the server could not be searched
    SERVER_NOT_SEARCHED = "server_not_searched"


class TimelinePlace(BaseModel):
    lead_id: uuid.UUID
    kind: str
    occurred_at: datetime


class SyncPosition(BaseModel):
    """Where the sync of the message's folder stands."""

    last_uid: int  # every UID up to this was examined, but for the history below the next
    history_last_uid: int  # the historical sync reads up to this
    # ... newest first: from this UID up it is examined (1: all of it)
    history_examined_down_to: int
    status: MailboxStatus
    status_reason: str


class MessagePlace(BaseModel):
    outcome: MessageOutcome
    explanation: str
    folder: str = ""  # inbox / sent, or the server's name of another folder; "" when in none
    uid: int | None = None
    rule: str | None = None  # the rule that decided: R4, R5, R6, R11, R14, R17
    # the sync's reason code (see GET /v1/mail-sync completeness.not_stored)
    reason: str | None = None
    examined_at: datetime | None = None
    stored_at: datetime | None = None  # when the sync published it
    timeline: list[TimelinePlace] = []
    sync_position: SyncPosition | None = None


class MessageAnswer(BaseModel):
    """What became of one Message-ID in one mailbox, from the sync's records (and the server, if
    unrecorded)."""

    message_id: str
    mailbox_id: uuid.UUID
    places: list[MessagePlace]
    # the mailbox's server was asked (nothing was recorded for the Message-ID)
    server_searched: bool


class MailboxSummary(BaseModel):
    """One row of the administrators' list (``GET /v1/mailboxes``)."""

    id: uuid.UUID
    user_id: uuid.UUID
    address: str
    provider: str
    status: MailboxStatus
    status_reason: str
    sync_mode: SyncMode | None
    last_synced_at: datetime | None
    counts_for_billing: bool
    connected_at: datetime
    updated_at: datetime


class ServerCheck(BaseModel):
    ok: bool
    kind: ErrorKind | None = None
    message: str | None = None
    fix: str | None = None


class ConnectionTest(BaseModel):
    """Result of ``POST /v1/mail-sync/test``: each login separately, in the user's words."""

    ok: bool
    imap: ServerCheck
    smtp: ServerCheck


class ErrorEntry(BaseModel):
    id: uuid.UUID
    occurred_at: datetime
    kind: ErrorKind
    message: str
    fix: str


class ServerPresetOut(BaseModel):
    host: str
    port: int
    tls: Literal["implicit", "starttls", "plain"]


class ProviderOut(BaseModel):
    id: str
    name: str
    imap: ServerPresetOut | None
    smtp: ServerPresetOut | None
    host_from_domain: bool
    provider_saves_sent: bool
    note: str
    # signing in with the provider (OAuth2) is offered: POST /v1/mail-sync/oauth/{id}/start
    oauth2: bool
    oauth2_note: str


class DnsRecordCheck(BaseModel):
    published: bool
    records: list[str]
    detail: str


class DomainCheck(BaseModel):
    domain: str
    dmarc: DnsRecordCheck
    dkim: DnsRecordCheck
    ready_for_bulk: bool
    advice: str
