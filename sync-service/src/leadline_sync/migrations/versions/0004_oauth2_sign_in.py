"""OAuth2 sign-in: mailbox auth and access-token expiry, sign-ins in progress

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 21:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "mailbox",
        sa.Column("auth", sa.Text(), server_default="password", nullable=False),
        schema="sync",
    )
    op.add_column(
        "mailbox",
        sa.Column("oauth_expires_at", sa.DateTime(timezone=True), nullable=True),
        schema="sync",
    )
    op.create_table(
        "oauth_state",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("state_sha256", sa.LargeBinary(), nullable=False),
        sa.Column("company_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("smtp_use", sa.Text(), nullable=False),
        sa.Column("nonce", sa.Text(), nullable=False),
        sa.Column("verifier_key_id", sa.Text(), nullable=False),
        sa.Column("verifier_wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("verifier_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_state")),
        sa.UniqueConstraint("state_sha256", name=op.f("uq_oauth_state_state_sha256")),
        schema="sync",
    )
    op.create_index(
        "ix_oauth_state_expires", "oauth_state", ["expires_at"], unique=False, schema="sync"
    )


def downgrade() -> None:
    op.drop_index("ix_oauth_state_expires", table_name="oauth_state", schema="sync")
    op.drop_table("oauth_state", schema="sync")
    op.drop_column("mailbox", "oauth_expires_at", schema="sync")
    op.drop_column("mailbox", "auth", schema="sync")
