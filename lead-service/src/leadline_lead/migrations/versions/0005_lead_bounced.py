"""lead.bounced_at: when mail to the lead last bounced hard, for its mail_status (R17)

Revision ID: 0005_lead_bounced
Revises: 0004_company_users
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_lead_bounced"
down_revision: str | None = "0004_company_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "lead", sa.Column("bounced_at", sa.DateTime(timezone=True), nullable=True), schema="lead"
    )


def downgrade() -> None:
    op.drop_column("lead", "bounced_at", schema="lead")
