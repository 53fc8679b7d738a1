"""unsubscribe.reason: why an address gets no more marketing mail, an unsubscribe or a complaint

A complaint (a feedback report, RFC 5965) stops marketing mail as an unsubscribe does (R16), and the
refusal says which it was.  Rows from before it are unsubscribes.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "unsubscribe",
        sa.Column("reason", sa.Text(), nullable=False, server_default="unsubscribed"),
        schema="send",
    )
    op.create_check_constraint(
        op.f("ck_unsubscribe_reason"),
        "unsubscribe",
        "reason IN ('unsubscribed', 'complained')",
        schema="send",
    )


def downgrade() -> None:
    op.drop_column("unsubscribe", "reason", schema="send")
