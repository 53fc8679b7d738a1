"""invitations by email, api key expiry

Codes of invitations not yet claimed are dropped: the administrator saw them (the defect this fixes),
so they are not carried over; an administrator re-invites such users (POST /v1/users/{id}/invitation).

Revision ID: 0002_invitations
Revises: c5d9b0ee2f54
Create Date: 2026-12-01 21:09:12.232369
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_invitations"
down_revision: str | None = "c5d9b0ee2f54"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "invitation",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("company_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("code_sha256", sa.Text(), nullable=False),
        sa.Column("invited_by", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_api_key_id", sa.Uuid(), nullable=True),
        sa.Column("claimed_from", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["company_id"],
            ["gateway.company.id"],
            name=op.f("fk_invitation_company_id_company"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["gateway.user.id"],
            name=op.f("fk_invitation_user_id_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitation")),
        sa.UniqueConstraint("code_sha256", name=op.f("uq_invitation_code_sha256")),
        schema="gateway",
    )
    op.create_index("ix_invitation_user", "invitation", ["user_id"], unique=False, schema="gateway")
    op.add_column(
        "api_key",
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        schema="gateway",
    )
    op.create_index(
        "ix_api_key_user_active",
        "api_key",
        ["user_id"],
        unique=False,
        schema="gateway",
        postgresql_where=sa.text("revoked_at IS NULL"),
    )
    op.drop_column("user", "invitation_sha256", schema="gateway")


def downgrade() -> None:
    op.add_column(
        "user",
        sa.Column("invitation_sha256", sa.TEXT(), autoincrement=False, nullable=True),
        schema="gateway",
    )
    op.drop_index(
        "ix_api_key_user_active",
        table_name="api_key",
        schema="gateway",
        postgresql_where=sa.text("revoked_at IS NULL"),
    )
    op.drop_column("api_key", "expires_at", schema="gateway")
    op.drop_index("ix_invitation_user", table_name="invitation", schema="gateway")
    op.drop_table("invitation", schema="gateway")
