"""folder_cursor.history_floor: the historical sync examines a folder newest first

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 00:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # 1 for every existing cursor: a history begun oldest first carries on that way (last_uid up to history_last_uid)
    op.add_column(
        "folder_cursor",
        sa.Column("history_floor", sa.BigInteger(), server_default="1", nullable=False),
        schema="sync",
    )


def downgrade() -> None:
    op.drop_column("folder_cursor", "history_floor", schema="sync")
