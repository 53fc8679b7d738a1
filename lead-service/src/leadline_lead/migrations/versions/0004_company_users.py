"""company users

Revision ID: 0004_company_users
Revises: 0003_delivery_delayed
Create Date: 2026-12-01 21:37:40.711548
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_company_users"
down_revision: str | None = "0003_delivery_delayed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "company_user",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("company_id", sa.Uuid(), nullable=False),
        sa.Column("deleted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_company_user")),
        schema="lead",
    )


def downgrade() -> None:
    op.drop_table("company_user", schema="lead")
