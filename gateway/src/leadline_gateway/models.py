"""The gateway's tables: companies, users with roles (R20), invitations, API keys (stored hashed).

An invitation's code reaches only the invitee, by email (R29): it is stored as its SHA-256, bound to
the address it was sent to, expires, and is claimed once (who claimed it and when is kept).
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    Uuid,
    func,
    text,
)

from leadline_kit.consumer import processed_event_table
from leadline_kit.db import service_metadata
from leadline_kit.identity import ROLES
from leadline_kit.outbox import outbox_table

metadata = service_metadata("gateway")
outbox = outbox_table(metadata)
processed = processed_event_table(metadata)

company = Table(
    "company",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", Text, nullable=False),
    Column("domains", ARRAY(Text), nullable=False, server_default="{}"),
    Column("block_own_domains", Boolean, nullable=False, server_default="true"),
    Column("mailbox_limit", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "mailbox_limit IS NULL OR mailbox_limit >= 0", name="mailbox_limit_not_negative"
    ),
)

user = Table(
    "user",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("company_id", Uuid, ForeignKey("company.id", ondelete="CASCADE"), nullable=False),
    Column("email", Text, nullable=False),
    Column("name", Text, nullable=False, server_default=""),
    Column("role", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("role IN (" + ", ".join(f"'{r}'" for r in ROLES) + ")", name="known_role"),
    Index("uq_user_company_email", "company_id", "email", unique=True),
)

api_key = Table(
    "api_key",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("company_id", Uuid, ForeignKey("company.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Uuid, ForeignKey("user.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False, server_default=""),
    Column("secret_sha256", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Index("ix_api_key_user_active", "user_id", postgresql_where=text("revoked_at IS NULL")),
)

invitation = Table(
    "invitation",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("company_id", Uuid, ForeignKey("company.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Uuid, ForeignKey("user.id", ondelete="CASCADE"), nullable=False),
    # the address the code was mailed to; only a claim naming it succeeds
    Column("email", Text, nullable=False),
    Column("code_sha256", Text, nullable=False, unique=True),
    Column("invited_by", Uuid, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    # a newer invitation of the same user withdraws this one
    Column("withdrawn_at", DateTime(timezone=True), nullable=True),
    Column("claimed_at", DateTime(timezone=True), nullable=True),
    Column("claimed_api_key_id", Uuid, nullable=True),
    Column("claimed_from", Text, nullable=True),
    Index("ix_invitation_user", "user_id"),
)
