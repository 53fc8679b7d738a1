"""examined_message: a keyed hash of each examined message's Message-ID with its folder and UID

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "examined_message",
        sa.Column("mailbox_id", sa.Uuid(), nullable=False),
        sa.Column("message_key", sa.LargeBinary(), nullable=False),
        sa.Column("folder", sa.Text(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column(
            "examined_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["sync.mailbox.id"],
            name=op.f("fk_examined_message_mailbox_id_mailbox"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "mailbox_id",
            "message_key",
            "folder",
            "uidvalidity",
            "uid",
            name=op.f("pk_examined_message"),
        ),
        schema="sync",
    )


def downgrade() -> None:
    op.drop_table("examined_message", schema="sync")
