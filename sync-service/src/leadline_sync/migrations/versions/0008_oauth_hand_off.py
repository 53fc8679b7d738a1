"""oauth_state.handoff_sha256 / finished_at: a sign-in reached without a key waits for its starter's key

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "oauth_state", sa.Column("handoff_sha256", sa.LargeBinary(), nullable=True), schema="sync"
    )
    op.add_column(
        "oauth_state",
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        schema="sync",
    )
    op.create_unique_constraint(
        op.f("uq_oauth_state_handoff_sha256"), "oauth_state", ["handoff_sha256"], schema="sync"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("uq_oauth_state_handoff_sha256"), "oauth_state", schema="sync")
    op.drop_column("oauth_state", "finished_at", schema="sync")
    op.drop_column("oauth_state", "handoff_sha256", schema="sync")
