"""The quota schema: sending accounts, quota reservations, companies, mailbox slots, plan usage."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Identity,
    Index,
    Integer,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from leadline_kit.consumer import processed_event_table
from leadline_kit.db import service_metadata
from leadline_kit.outbox import outbox_table
from leadline_quota.states import ReservationState, SlotState, check_constraint

metadata = service_metadata("quota")
outbox = outbox_table(metadata)
processed = processed_event_table(metadata)

# One row per sending account; reservers lock it (INSERT ... ON CONFLICT DO UPDATE) so that the
# reservations of one account are decided one after the other, in any number of processes.
sending_account = Table(
    "sending_account",
    metadata,
    Column("company_id", Uuid, primary_key=True),
    Column("account_key", Text, primary_key=True),
    Column("provider", Text, nullable=False, server_default="custom"),
    # the account settings the sender passed with its latest request (field by field over the
    # preset)
    Column("account_settings", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("settings_month_start_day", Integer),
    # operator overrides (PUT /v1/operator/quotas/{company_id}/accounts/{account_key}); a null value
    # lifts the limit
    Column("operator_overrides", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("operator_month_start_day", Integer),
    # the tenant's own limits (PUT /v1/quotas/accounts/{account_key}): they only ever lower a limit
    Column("tenant_overrides", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_reserved_at", DateTime(timezone=True)),
)

# A granted reservation counts against the account's windows from ``reserved_at`` while it is
# ``reserved`` and not expired, or ``committed``; ``released`` or expired ones count for nothing.
reservation = Table(
    "reservation",
    metadata,
    Column("reservation_id", Uuid, primary_key=True),
    Column("company_id", Uuid, nullable=False),
    Column("account_key", Text, nullable=False),
    # a sender's batch of messages reserves them together: ``recipients`` is their total
    Column("messages", Integer, nullable=False, server_default=text("1")),
    Column("recipients", Integer, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("state", Text, nullable=False, server_default=ReservationState.RESERVED.value),
    Column("reserved_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("settled_at", DateTime(timezone=True)),
    CheckConstraint(check_constraint(ReservationState), name="state"),
    # the usage aggregate reads only these columns: with them in the index, old (all-visible) rows
    # of a month window are counted by an index-only scan
    Index(
        "ix_reservation_account_time",
        "company_id",
        "account_key",
        "reserved_at",
        postgresql_include=["state", "expires_at", "recipients", "messages"],
    ),
)

company = Table(
    "company",
    metadata,
    Column("company_id", Uuid, primary_key=True),
    Column("mailbox_limit", Integer),  # None = unlimited
    # occurred_at of the company.updated event the limit came from: older events are ignored
    Column("limit_as_of", DateTime(timezone=True)),
    Column("plan", Text, nullable=False, server_default="standard"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

mailbox_slot = Table(
    "mailbox_slot",
    metadata,
    Column("company_id", Uuid, primary_key=True),
    Column("mailbox_id", Uuid, primary_key=True),
    Column("state", Text, nullable=False),
    # FIFO order of pending mailboxes (R9: oldest first)
    Column("seq", BigInteger, Identity(always=True), nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("granted_at", DateTime(timezone=True)),
    CheckConstraint(check_constraint(SlotState), name="state"),
    Index("ix_mailbox_slot_queue", "company_id", "state", "seq"),
)

synced_email_usage = Table(
    "synced_email_usage",
    metadata,
    Column("company_id", Uuid, primary_key=True),
    Column("user_id", Uuid, primary_key=True),
    Column("day", Date, primary_key=True),  # UTC day
    Column("used", Integer, nullable=False),
)
