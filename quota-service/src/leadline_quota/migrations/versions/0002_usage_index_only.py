"""usage aggregate by index-only scan

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 19:05:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_reservation_account_time", table_name="reservation", schema="quota")
    op.create_index(
        "ix_reservation_account_time",
        "reservation",
        ["company_id", "account_key", "reserved_at"],
        unique=False,
        schema="quota",
        postgresql_include=["state", "expires_at", "recipients"],
    )


def downgrade() -> None:
    op.drop_index("ix_reservation_account_time", table_name="reservation", schema="quota")
    op.create_index(
        "ix_reservation_account_time",
        "reservation",
        ["company_id", "account_key", "reserved_at"],
        unique=False,
        schema="quota",
    )
