"""sending_account.tenant_overrides: a tenant's limits only lower the preset; raising is the operator's

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 21:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "sending_account",
        sa.Column(
            "tenant_overrides",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        schema="quota",
    )
    # every override so far was set by a tenant administrator: from now on they may only lower a limit
    # (nulls, which lifted one, are dropped)
    op.execute(
        "UPDATE quota.sending_account SET tenant_overrides = COALESCE((SELECT jsonb_object_agg(key, value) "
        "FROM jsonb_each(operator_overrides) WHERE value <> 'null'::jsonb), '{}'::jsonb), "
        "operator_overrides = '{}'::jsonb"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE quota.sending_account SET operator_overrides = operator_overrides || tenant_overrides"
    )
    op.drop_column("sending_account", "tenant_overrides", schema="quota")
