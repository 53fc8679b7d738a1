"""fewer index writes per message: idempotency keys indexed only where given, no separate index of sending rows

Every state change of a message writes a new row version into each of its indexes (the state is in
the partial indexes' predicates, so no update of it is HOT).  The unique idempotency index held an
entry for every message, also the many without a key; it now holds only keyed ones (same uniqueness:
NULL keys never conflicted).  The index of ``sending`` rows by holder is dropped: recovery finds
them through the open-state index (a few rows per worker), and the claim and the record wrote it
twice per message.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(
        "uq_outgoing_message_idempotency", "outgoing_message", schema="send", type_="unique"
    )
    op.create_index(
        "uq_outgoing_message_idempotency",
        "outgoing_message",
        ["company_id", "user_id", "idempotency_key"],
        unique=True,
        schema="send",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index("ix_outgoing_message_sending", table_name="outgoing_message", schema="send")


def downgrade() -> None:
    op.create_index(
        "ix_outgoing_message_sending",
        "outgoing_message",
        ["claimed_by"],
        unique=False,
        schema="send",
        postgresql_where=sa.text("state = 'sending'"),
    )
    op.drop_index("uq_outgoing_message_idempotency", table_name="outgoing_message", schema="send")
    op.create_unique_constraint(
        "uq_outgoing_message_idempotency",
        "outgoing_message",
        ["company_id", "user_id", "idempotency_key"],
        schema="send",
    )
