"""sync mode, last complete sync, the UIDVALIDITY reset window, checks on the state columns

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 21:38:44.092606
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "'pending', 'enabled', 'error', 'connection_failed', 'disabled'"
SLOTS = "'unclaimed', 'granted', 'pending', 'releasing', 'released'"


def upgrade() -> None:
    op.add_column(
        "folder_cursor",
        sa.Column("uidvalidity_resets_since", sa.DateTime(timezone=True), nullable=True),
        schema="sync",
    )
    op.add_column(
        "folder_cursor",
        sa.Column("rescan_refused_at", sa.DateTime(timezone=True), nullable=True),
        schema="sync",
    )
    op.add_column("mailbox", sa.Column("sync_mode", sa.Text(), nullable=True), schema="sync")
    op.add_column(
        "mailbox",
        sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=True),
        schema="sync",
    )
    op.create_index(
        "ix_mailbox_last_synced",
        "mailbox",
        ["last_synced_at"],
        unique=False,
        schema="sync",
        postgresql_where=sa.text("status IN ('enabled', 'error')"),
    )
    # a mailbox given up or disabled gives its slot back (mailbox/states.py); one never asked for is released
    op.execute(
        "UPDATE sync.mailbox SET slot = 'released' "
        "WHERE status IN ('connection_failed', 'disabled') AND slot = 'unclaimed'"
    )
    op.create_check_constraint("known_status", "mailbox", f"status IN ({STATUSES})", schema="sync")
    op.create_check_constraint("known_slot", "mailbox", f"slot IN ({SLOTS})", schema="sync")
    op.create_check_constraint(
        "known_sync_mode",
        "mailbox",
        "sync_mode IN ('live', 'rotating') OR sync_mode IS NULL",
        schema="sync",
    )


def downgrade() -> None:
    for name in ("known_sync_mode", "known_slot", "known_status"):
        op.drop_constraint(op.f(f"ck_mailbox_{name}"), "mailbox", type_="check", schema="sync")
    op.drop_index(
        "ix_mailbox_last_synced",
        table_name="mailbox",
        schema="sync",
        postgresql_where=sa.text("status IN ('enabled', 'error')"),
    )
    op.drop_column("mailbox", "last_synced_at", schema="sync")
    op.drop_column("mailbox", "sync_mode", schema="sync")
    op.drop_column("folder_cursor", "rescan_refused_at", schema="sync")
    op.drop_column("folder_cursor", "uidvalidity_resets_since", schema="sync")
