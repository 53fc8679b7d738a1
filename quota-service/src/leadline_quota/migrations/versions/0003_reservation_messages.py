"""reservation.messages: a reservation may hold a sender's batch of messages

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 21:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # a constant default: PostgreSQL adds the column without rewriting the table
    op.add_column(
        "reservation",
        sa.Column("messages", sa.Integer(), server_default=sa.text("1"), nullable=False),
        schema="quota",
    )
    # the usage aggregate now sums messages: keep it an index-only scan
    op.drop_index("ix_reservation_account_time", table_name="reservation", schema="quota")
    op.create_index(
        "ix_reservation_account_time",
        "reservation",
        ["company_id", "account_key", "reserved_at"],
        unique=False,
        schema="quota",
        postgresql_include=["state", "expires_at", "recipients", "messages"],
    )


def downgrade() -> None:
    op.drop_index("ix_reservation_account_time", table_name="reservation", schema="quota")
    op.create_index(
        "ix_reservation_account_time",
        "reservation",
        ["company_id", "account_key", "reserved_at"],
        unique=False,
        schema="quota",
        postgresql_include=["state", "expires_at", "recipients"],
    )
    op.drop_column("reservation", "messages", schema="quota")
