"""the request an idempotency key was first used with; an SMTP account's error and its fix

``outgoing_message.request_sha256`` lets a reused key with a different body be refused (422) instead
of silently answering with the first message; rows from before it have none and are answered as before.
``smtp_account.error`` / ``error_at``: an account whose stored password does not decrypt is taken out
of sending with the fix shown, until its password is entered again.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outgoing_message", sa.Column("request_sha256", sa.Text()), schema="send")
    op.add_column("smtp_account", sa.Column("error", sa.Text()), schema="send")
    op.add_column("smtp_account", sa.Column("error_at", sa.DateTime(timezone=True)), schema="send")


def downgrade() -> None:
    op.drop_column("smtp_account", "error_at", schema="send")
    op.drop_column("smtp_account", "error", schema="send")
    op.drop_column("outgoing_message", "request_sha256", schema="send")
