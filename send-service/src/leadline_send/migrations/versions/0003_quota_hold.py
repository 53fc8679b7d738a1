"""quota holds: reservations held by a delivery process, settled by recovery if it dies

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "quota_hold",
        sa.Column("reservation_id", sa.Uuid(), nullable=False),
        sa.Column("company_id", sa.Uuid(), nullable=False),
        sa.Column("holder", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("reservation_id", name=op.f("pk_quota_hold")),
        schema="send",
    )
    op.create_index("ix_quota_hold_holder", "quota_hold", ["holder"], unique=False, schema="send")


def downgrade() -> None:
    op.drop_index("ix_quota_hold_holder", table_name="quota_hold", schema="send")
    op.drop_table("quota_hold", schema="send")
