"""Tables of the sync service (schema ``sync``).

- ``mailbox``: one connection per user (at most one that is not disabled), its
  settings, encrypted credentials (R25), status (R8), mailbox-limit slot (R9),
  retry schedule and the replica lease that makes one replica its only syncer.
- ``folder_cursor``: per mailbox and folder (inbox, sent) the UIDVALIDITY, the
  last UID processed and HIGHESTMODSEQ; advanced in the same transaction as the
  events of the batch it covers.
- ``synced_message``: what left the service; unique per mailbox + folder +
  UIDVALIDITY + UID and per mailbox + folder + Message-ID, so a restart or a
  UIDVALIDITY resync never publishes a message twice (R26).
- ``examined_range``, ``audit_range``: what the sync examined (with the reason
  it was stored or not) and what the server held at the last audit, both as
  UID ranges (the completeness audit, ``sync/audit.py``).
- ``examined_message``: per examined message, a keyed hash of its Message-ID
  with its folder and UID, nothing else (R6), so that "why is this mail not on
  the timeline?" finds it (``sync/audit.py``, ``GET /v1/mail-sync/messages``).
- ``lead_address``, ``blocklist_entry``, ``company``: this service's copy of
  what it matches on, kept from lead-service and gateway events (R5, R6).
- ``lead_recheck``: per mailbox, a lead (or new addresses of one) that reached this
  service after mail with it may have been examined; the sync searches the
  folders for its mail again and deletes the row.
- ``mailbox_error``: the error log users read (when, what, how to fix).
- ``oauth_state``: sign-ins with Gmail / Microsoft in progress (single use, short-lived).
- ``replica``: the sync replicas alive and their capacities, so that they share the mailboxes
  evenly.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)

from leadline_kit.consumer import processed_event_table
from leadline_kit.db import service_metadata
from leadline_kit.lead_addresses import lead_address_table
from leadline_kit.outbox import outbox_table
from leadline_sync.mailbox.states import MailboxStatus, Slot, SyncMode


def _one_of(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


metadata = service_metadata("sync")
outbox = outbox_table(metadata)
processed = processed_event_table(metadata)

mailbox = Table(
    "mailbox",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("company_id", Uuid, nullable=False),
    Column("user_id", Uuid, nullable=False),
    Column("address", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("smtp_use", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("status_reason", Text, nullable=False, server_default=""),
    Column("imap_host", Text, nullable=False),
    Column("imap_port", Integer, nullable=False),
    Column("imap_tls", Text, nullable=False),
    Column("imap_username", Text, nullable=False),
    Column("imap_pinned_sha256", Text),
    Column("smtp_host", Text, nullable=False),
    Column("smtp_port", Integer, nullable=False),
    Column("smtp_tls", Text, nullable=False),
    Column("smtp_username", Text, nullable=False),
    Column("smtp_pinned_sha256", Text),
    # R25: AES-256-GCM ciphertext of the passwords under a data key wrapped by key
    # ``credential_key_id``; cleared when sync is disabled.
    Column("credential_key_id", Text),
    Column("credential_wrapped_key", LargeBinary),
    Column("credential_ciphertext", LargeBinary),
    # "password", or "oauth2": the credentials hold the provider's refresh token and the access
    # token that expires at ``oauth_expires_at`` (sign-in by XOAUTH2 / OAUTHBEARER)
    Column("auth", Text, nullable=False, server_default="password"),
    Column("oauth_expires_at", DateTime(timezone=True)),
    Column("sent_folder", Text),
    Column("provider_saves_sent", Boolean, nullable=False, server_default="false"),
    # R5: leads created up to this moment get the full history, later ones mail from their creation
    # on
    Column("connected_at", DateTime(timezone=True), nullable=False),
    Column("history_completed_at", DateTime(timezone=True)),
    # R9: unclaimed (ask the quota service), granted, pending, releasing (tell it), released
    Column("slot", Text, nullable=False, server_default="unclaimed"),
    Column("failing_since", DateTime(timezone=True)),
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("lease_owner", Text),
    Column("lease_expires_at", DateTime(timezone=True)),
    # live | rotating: how the replica that last claimed it syncs it (live only while its lease
    # runs)
    Column("sync_mode", Text),
    # when both folders were last synced to the end (rotation serves the oldest first)
    Column("last_synced_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("disabled_at", DateTime(timezone=True)),
    # R29: when and how the address was proven ("message": the token sent through the SMTP login was
    # found in the IMAP INBOX; "provider": an OAuth2 identity); null for mailboxes connected before
    Column("address_proven_at", DateTime(timezone=True)),
    Column("address_proven_by", Text),
    Index(
        "uq_mailbox_user_connected",
        "company_id",
        "user_id",
        unique=True,
        postgresql_where=text("status <> 'disabled'"),
    ),
    # one address is synced by one mailbox per company (mailboxes connected before the proof existed
    # are left out: the connect path refuses a second one for them)
    Index(
        "uq_mailbox_address_connected",
        "company_id",
        "address",
        unique=True,
        postgresql_where=text("status <> 'disabled' AND address_proven_at IS NOT NULL"),
    ),
    Index("ix_mailbox_company_created", "company_id", "created_at", "id"),
    Index(
        "ix_mailbox_due", "next_attempt_at", postgresql_where=text("status IN ('enabled', 'error')")
    ),
    Index(
        "ix_mailbox_last_synced",
        "last_synced_at",
        postgresql_where=text("status IN ('enabled', 'error')"),
    ),
    CheckConstraint(_one_of("status", MailboxStatus), name="known_status"),
    CheckConstraint(_one_of("slot", Slot), name="known_slot"),
    CheckConstraint(
        _one_of("sync_mode", SyncMode) + " OR sync_mode IS NULL", name="known_sync_mode"
    ),
)

folder_cursor = Table(
    "folder_cursor",
    metadata,
    Column("mailbox_id", Uuid, ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
    Column("folder", Text, nullable=False),  # inbox | sent
    Column("name", Text, nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("last_uid", BigInteger, nullable=False, server_default="0"),
    Column("highestmodseq", BigInteger),
    Column("uidnext", BigInteger, nullable=False, server_default="0"),
    # the last UID that existed when the historical sync of this folder started (progress)
    Column("history_last_uid", BigInteger, nullable=False, server_default="0"),
    # the historical sync examines UIDs 1..history_last_uid newest first: every UID from
    # history_floor up to history_last_uid is examined (1: the whole history; a UID below the floor
    # is not examined yet), while last_uid, which starts at history_last_uid, is the cursor of the
    # mail that arrives meanwhile
    Column("history_floor", BigInteger, nullable=False, server_default="1"),
    # UIDVALIDITY changes (rescans) in the day that started at uidvalidity_resets_since; past
    # LEADLINE_SYNC_MAX_RESETS_PER_DAY the folder is not rescanned until that day ends (refusal
    # logged once)
    Column("uidvalidity_resets", Integer, nullable=False, server_default="0"),
    Column("uidvalidity_resets_since", DateTime(timezone=True)),
    Column("rescan_refused_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # the last completeness audit (sync/audit.py) and how many never-examined UIDs it found and
    # fetched
    Column("audited_at", DateTime(timezone=True)),
    Column("audit_found", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("mailbox_id", "folder"),
)


def _uid_ranges(name: str, *extra: Column[str]) -> Table:
    """Ranges of UIDs of one folder numbering (sync/audit.py): disjoint, keyed by their first
    UID."""
    return Table(
        name,
        metadata,
        Column("mailbox_id", Uuid, ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
        Column("folder", Text, nullable=False),
        Column("uidvalidity", BigInteger, nullable=False),
        Column("first_uid", BigInteger, nullable=False),
        Column("last_uid", BigInteger, nullable=False),
        *extra,
        PrimaryKeyConstraint("mailbox_id", "folder", "uidvalidity", "first_uid"),
    )


# what the sync examined, with the reason each message was stored or not
examined_range = _uid_ranges("examined_range", Column("reason", Text, nullable=False))
# the server's UIDs at the last audit
audit_range = _uid_ranges("audit_range")

# Message-ID → where it was examined; the reason is the UID's in examined_range (moves when examined
# again)
examined_message = Table(
    "examined_message",
    metadata,
    Column("mailbox_id", Uuid, ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
    # audit.message_key: HMAC of mailbox + Message-ID
    Column("message_key", LargeBinary, nullable=False),
    Column("folder", Text, nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("examined_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("mailbox_id", "message_key", "folder", "uidvalidity", "uid"),
)

synced_message = Table(
    "synced_message",
    metadata,
    Column("mailbox_id", Uuid, ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
    Column("folder", Text, nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("kind", Text, nullable=False),  # mail | bounce
    Column("event_id", Uuid, nullable=False),
    Column("synced_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("mailbox_id", "folder", "uidvalidity", "uid"),
    UniqueConstraint("mailbox_id", "folder", "message_id", name="uq_synced_message_message_id"),
)

company = Table(
    "company",
    metadata,
    Column("company_id", Uuid, primary_key=True),
    Column("domains", ARRAY(Text), nullable=False, server_default="{}"),
    Column("block_own_domains", Boolean, nullable=False, server_default="true"),
)

lead_address = lead_address_table(
    metadata,
    Column("lead_created_at", DateTime(timezone=True), nullable=False),
    Index("ix_lead_address_company_address", "company_id", "address"),
)

blocklist_entry = Table(
    "blocklist_entry",
    metadata,
    Column("company_id", Uuid, nullable=False),
    Column("entry_id", Uuid, nullable=False),
    Column("kind", Text, nullable=False),  # address | domain
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("company_id", "entry_id"),
)

lead_recheck = Table(
    "lead_recheck",
    metadata,
    Column("mailbox_id", Uuid, ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
    Column("lead_id", Uuid, nullable=False),
    Column("addresses", ARRAY(Text), nullable=False),
    # R5: mail dated from here on is the lead's; NULL: the lead existed at connect time (its whole
    # history)
    Column("since", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("mailbox_id", "lead_id"),
)

oauth_state = Table(
    "oauth_state",
    metadata,
    # one sign-in with a provider in progress: the caller it is for, the PKCE verifier (sealed, R25)
    # and the OpenID nonce; the state itself is stored only as its SHA-256, and works once (used_at)
    # before expires_at. Reached without a key, the callback seals the code beside the verifier and
    # hands back a one-time sign-in (stored as its SHA-256) that only the starter's key finishes
    # (finished_at), before expires_at
    Column("id", Uuid, primary_key=True),
    Column("state_sha256", LargeBinary, nullable=False, unique=True),
    Column("company_id", Uuid, nullable=False),
    Column("user_id", Uuid, nullable=False),
    Column("provider", Text, nullable=False),
    Column("smtp_use", Text, nullable=False),
    Column("nonce", Text, nullable=False),
    Column("verifier_key_id", Text, nullable=False),
    Column("verifier_wrapped_key", LargeBinary, nullable=False),
    Column("verifier_ciphertext", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
    Column("handoff_sha256", LargeBinary, unique=True),
    Column("finished_at", DateTime(timezone=True)),
    Index("ix_oauth_state_expires", "expires_at"),
)

replica = Table(
    "replica",
    metadata,
    # the sync replicas alive (seen_at within a lease period: written with each lease renewal,
    # deleted at a clean stop) and how many live mailboxes each may hold: the mailboxes are spread
    # over them in that proportion
    Column("name", Text, primary_key=True),
    Column("live_capacity", Integer, nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
)

mailbox_error = Table(
    "mailbox_error",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("company_id", Uuid, nullable=False),
    Column("mailbox_id", Uuid, ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("fix", Text, nullable=False),
    Index("ix_mailbox_error_mailbox_time", "mailbox_id", "occurred_at", "id"),
)
