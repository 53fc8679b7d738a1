"""index of messages still in motion, for the queue-depth gauge

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_outgoing_message_open_state",
        "outgoing_message",
        ["state"],
        unique=False,
        schema="send",
        postgresql_where="state IN ('queued', 'sending', 'deferred', 'unknown')",
    )


def downgrade() -> None:
    op.drop_index("ix_outgoing_message_open_state", table_name="outgoing_message", schema="send")
