"""The send schema: outgoing messages and their attempts, company SMTP accounts, the lead copy.

``outgoing_message.state`` follows the delivery state machine documented in
:mod:`leadline_send.delivery.repository`.  Exactly-once effects rest on unique
constraints (R26): one message per (company, sender, idempotency key), one
attempt per (message, number), one unsubscribe per (company, address).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    Table,
    Text,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from leadline_kit.consumer import processed_event_table
from leadline_kit.db import service_metadata
from leadline_kit.lead_addresses import lead_address_table
from leadline_kit.outbox import outbox_table
from leadline_send.states import DUE, OPEN, AttemptPhase, MessageState, sql

SCHEMA = "send"
metadata = service_metadata(SCHEMA)
outbox = outbox_table(metadata)
processed = processed_event_table(metadata)


smtp_account = Table(
    "smtp_account",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("company_id", Uuid, nullable=False),
    Column("name", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("host", Text, nullable=False),
    Column("port", Integer, nullable=False),
    Column("tls", Text, nullable=False),
    Column("pinned_sha256", Text),
    Column("username", Text, nullable=False, server_default=""),
    # the password sealed by leadline_send.credentials (AES-256-GCM, key id, row ids as associated
    # data)
    Column("password_sealed", LargeBinary),
    Column("key_id", Text),
    Column("from_email", Text, nullable=False),
    Column("from_name", Text, nullable=False, server_default=""),
    Column("active", Boolean, nullable=False, server_default="false"),
    Column("timeout_seconds", Integer, nullable=False, server_default="30"),
    Column("default_cc", JSONB, nullable=False, server_default="[]"),
    Column("default_bcc", JSONB, nullable=False, server_default="[]"),
    Column("max_per_month", Integer),
    Column("month_start_day", Integer, nullable=False, server_default="1"),
    Column("unsubscribe_url", Text),
    Column("precedence", Text),
    Column("return_path", Text),
    Column("utm", JSONB, nullable=False, server_default="{}"),
    Column("display_order", Integer, nullable=False, server_default="0"),
    # why the account cannot send and how to fix it (a stored password that does not decrypt)
    Column("error", Text),
    Column("error_at", DateTime(timezone=True)),
    Column("confirmed_at", DateTime(timezone=True)),
    Column("confirmation_code_hash", Text),
    Column("confirmation_expires_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("type IN ('campaigns', 'customer_service', 'system')", name="type"),
    CheckConstraint("tls IN ('implicit', 'starttls', 'plain')", name="tls"),
    Index("ix_smtp_account_company_type_order", "company_id", "type", "display_order"),
)

outgoing_message = Table(
    "outgoing_message",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("company_id", Uuid, nullable=False),
    Column("user_id", Uuid, nullable=False),
    Column("idempotency_key", Text),
    # SHA-256 of the request the key was first used with: the same key with another body is refused
    Column("request_sha256", Text),
    Column("category", Text, nullable=False),
    Column("state", Text, nullable=False),
    # the Message-ID header, made once at the API and kept across retries and resends (R21)
    Column("message_id", Text, nullable=False),
    # "mailbox:<uuid>" for the sender's synced mailbox, "smtp:<uuid>" for a company account
    Column("account_key", Text, nullable=False),
    Column("provider", Text, nullable=False, server_default="custom"),
    Column("from_address", Text, nullable=False),
    Column("envelope_from", Text, nullable=False),
    Column("recipients", JSONB, nullable=False),
    Column("lead_ids", JSONB, nullable=False, server_default="[]"),
    # what the message was built from, to rebuild it when rotation picks another account (R15)
    Column("draft", JSONB, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("subject", Text, nullable=False, server_default=""),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # the delivery worker holding the message while it is ``sending`` (its PostgreSQL advisory lock
    # key)
    Column("claimed_by", BigInteger),
    Column("reservation_id", Uuid),
    Column("last_error", Text),
    Column("smtp_reply", Text),
    Column("sent_copy", Text),
    Column("delivery_notice", JSONB),  # the last bounce or delay notice (R17), as the API shows it
    Column("sent_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("state IN " + sql(MessageState), name="state"),
    CheckConstraint("category IN ('personal', 'marketing')", name="category"),
    Index(
        "uq_outgoing_message_idempotency",
        "company_id",
        "user_id",
        "idempotency_key",
        unique=True,
        postgresql_where="idempotency_key IS NOT NULL",
    ),
    Index("ix_outgoing_message_due", "next_attempt_at", postgresql_where="state IN " + sql(DUE)),
    Index("ix_outgoing_message_company_created", "company_id", "created_at", "id"),
    Index("ix_outgoing_message_company_message_id", "company_id", "message_id"),
    # the queue-depth gauge counts only messages still in motion; terminal states grow without bound
    Index("ix_outgoing_message_open_state", "state", postgresql_where="state IN " + sql(OPEN)),
)

send_attempt = Table(
    "send_attempt",
    metadata,
    Column("message_id", Uuid, primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("account_key", Text, nullable=False),
    # connecting → data (committed before the end of data, R21) → done
    Column("phase", Text, nullable=False),
    Column("outcome", Text),
    Column("reply", Text),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint("phase IN " + sql(AttemptPhase), name="phase"),
)

# Quota reservations this service holds and has not yet settled with the quota service, with the
# holding process's advisory lock key: when that process dies, recovery commits what was used under
# each of them and releases the rest, instead of leaving them to expire.
quota_hold = Table(
    "quota_hold",
    metadata,
    Column("reservation_id", Uuid, primary_key=True),
    Column("company_id", Uuid, nullable=False),
    Column("holder", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_quota_hold_holder", "holder"),
)

lead_address = lead_address_table(
    metadata,
    Column("position", Integer, nullable=False),
    Column("name", Text, nullable=False, server_default=""),
)

unsubscribe = Table(
    "unsubscribe",
    metadata,
    Column("company_id", Uuid, primary_key=True),
    Column("address", Text, primary_key=True),
    Column("lead_id", Uuid),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # unsubscribed (R16) or complained (a feedback report): either way no more marketing mail
    Column("reason", Text, nullable=False, server_default="unsubscribed"),
    CheckConstraint("reason IN ('unsubscribed', 'complained')", name="reason"),
)
