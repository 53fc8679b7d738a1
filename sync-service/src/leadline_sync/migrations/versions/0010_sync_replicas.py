"""replica: the sync replicas alive and their live capacities (the mailboxes are spread over them)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 07:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "replica",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("live_capacity", sa.Integer(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_replica")),
        schema="sync",
    )


def downgrade() -> None:
    op.drop_table("replica", schema="sync")
