"""the last delivery notice of a message (R17): hard or soft, status, reason, for whom

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "outgoing_message",
        sa.Column("delivery_notice", postgresql.JSONB(), nullable=True),
        schema="send",
    )


def downgrade() -> None:
    op.drop_column("outgoing_message", "delivery_notice", schema="send")
