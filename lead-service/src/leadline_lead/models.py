"""The lead schema: leads and their addresses, the blocklist, company settings, timeline events.

A timeline event is unique per (company, lead, message key) (R12, R26): the
message key is the Message-ID without angle brackets, or ``bounce <Message-ID>``
for the bounce of that message.  Every way the same message reached the lead
is a row in ``timeline_event_source`` (a mailbox id, ``smart_mail`` or
``bounce_notice``), so removing one mailbox's history (R11) deletes only the
events no other source also brought.
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
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
from leadline_kit.outbox import outbox_table

metadata = service_metadata("lead")
outbox = outbox_table(metadata)
processed = processed_event_table(metadata)

company_settings = Table(
    "company_settings",
    metadata,
    Column("company_id", Uuid, primary_key=True),
    Column("domains", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("block_own_domains", Boolean, nullable=False, server_default=text("true")),
    # occurred_at of the company.updated event applied last: an older one arriving late is ignored
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# the company's users, from the gateway's user.updated / user.deleted: a lead's owner is one of them
company_user = Table(
    "company_user",
    metadata,
    Column("user_id", Uuid, primary_key=True),
    Column("company_id", Uuid, nullable=False),
    Column("deleted", Boolean, nullable=False, server_default=text("false")),
    # occurred_at of the user event applied last: an older one arriving late is ignored
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

lead = Table(
    "lead",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("company_id", Uuid, nullable=False),
    Column("name", Text, nullable=False),
    Column("account_name", Text, nullable=False, server_default=""),
    Column("owner_user_id", Uuid),
    Column("stage", Text, nullable=False),
    Column("unsubscribed_at", DateTime(timezone=True)),
    Column("bounced_at", DateTime(timezone=True)),  # mail to the lead last bounced hard (R17)
    # the lead last reported our mail as spam (a feedback report)
    Column("complained_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_lead_company_created", "company_id", text("created_at DESC"), text("id DESC")),
    # search by part of the name (pg_trgm, created by the migration)
    Index("ix_lead_name_trgm", text("lower(name) public.gin_trgm_ops"), postgresql_using="gin"),
    Index(
        "ix_lead_account_name_trgm",
        text("lower(account_name) public.gin_trgm_ops"),
        postgresql_using="gin",
    ),
)

lead_address = Table(
    "lead_address",
    metadata,
    Column("company_id", Uuid, nullable=False),
    # normalised: lower-case local part @ IDNA (punycode) lower-case domain
    Column("address", Text, nullable=False),
    Column("domain", Text, nullable=False),
    Column("lead_id", Uuid, ForeignKey("lead.lead.id", ondelete="CASCADE"), nullable=False),
    Column("position", BigInteger, nullable=False, server_default="0"),
    # an address belongs to at most one lead per company
    PrimaryKeyConstraint("company_id", "address", name="pk_lead_address"),
    Index("ix_lead_address_lead_id", "lead_id"),
    Index("ix_lead_address_company_domain", "company_id", "domain"),
    # search by address prefix whatever the database's collation
    Index("ix_lead_address_company_address_prefix", "company_id", text("address text_pattern_ops")),
)

blocklist_entry = Table(
    "blocklist_entry",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("company_id", Uuid, nullable=False),
    Column("kind", Text, nullable=False),
    Column("value", Text, nullable=False),
    Column("created_by", Uuid),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("kind IN ('address', 'domain')", name="kind"),
    UniqueConstraint("company_id", "kind", "value", name="uq_blocklist_entry_company_kind_value"),
)

timeline_event = Table(
    "timeline_event",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("company_id", Uuid, nullable=False),
    Column("lead_id", Uuid, ForeignKey("lead.lead.id", ondelete="CASCADE"), nullable=False),
    Column("message_key", Text, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("category", Text, nullable=False, server_default="personal"),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("direction", Text, nullable=False),
    Column("from_address", Text, nullable=False, server_default=""),
    Column("from_name", Text, nullable=False, server_default=""),
    Column("to_addresses", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("cc_addresses", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    # the lead's own addresses this message involves; a blocklisted one stops counting (R6)
    Column("matched_addresses", ARRAY(Text), nullable=False),
    Column("subject", Text, nullable=False, server_default=""),
    Column("snippet", Text, nullable=False, server_default=""),
    Column("mailbox_id", Uuid),
    Column("user_id", Uuid),
    Column("folder", Text),
    Column("bounced_at", DateTime(timezone=True)),
    Column("bounce_recipient", Text),
    Column("bounce_status", Text),
    Column("bounce_diagnostic", Text),
    CheckConstraint(
        (
            "kind IN ('email_received', 'email_sent', 'smart_mail_sent', 'bounce', "
            "'delivery_delayed', 'complaint')"
        ),
        name="kind",
    ),
    CheckConstraint("direction IN ('inbound', 'outbound')", name="direction"),
    UniqueConstraint("company_id", "lead_id", "message_key", name="uq_timeline_event_message"),
    Index("ix_timeline_event_lead_recent", "lead_id", text("occurred_at DESC"), text("id DESC")),
    Index("ix_timeline_event_company_occurred", "company_id", "occurred_at"),
)

timeline_event_source = Table(
    "timeline_event_source",
    metadata,
    Column(
        "timeline_event_id",
        BigInteger,
        ForeignKey("lead.timeline_event.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # a mailbox id, "smart_mail" or "bounce_notice"
    Column("source", Text, nullable=False),
    Column("company_id", Uuid, nullable=False),
    Column("mailbox_id", Uuid),
    PrimaryKeyConstraint("timeline_event_id", "source", name="pk_timeline_event_source"),
    Index(
        "ix_timeline_event_source_mailbox",
        "company_id",
        "mailbox_id",
        postgresql_where=text("mailbox_id IS NOT NULL"),
    ),
)
