"""mailbox.address_proven_at / address_proven_by, and one proven address per company

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "mailbox",
        sa.Column("address_proven_at", sa.DateTime(timezone=True), nullable=True),
        schema="sync",
    )
    op.add_column(
        "mailbox", sa.Column("address_proven_by", sa.Text(), nullable=True), schema="sync"
    )
    # mailboxes connected before have no proof and stay out of the index (duplicates among them may exist)
    op.create_index(
        "uq_mailbox_address_connected",
        "mailbox",
        ["company_id", "address"],
        unique=True,
        schema="sync",
        postgresql_where=sa.text("status <> 'disabled' AND address_proven_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_mailbox_address_connected", table_name="mailbox", schema="sync")
    op.drop_column("mailbox", "address_proven_by", schema="sync")
    op.drop_column("mailbox", "address_proven_at", schema="sync")
