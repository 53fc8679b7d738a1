"""lead search indexes: address prefix, trigram name / account name

Revision ID: 0002_lead_search
Revises: 098f51fd6ec1
Create Date: 2026-11-23 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_lead_search"
down_revision: str | None = "098f51fd6ec1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # pg_trgm is a trusted extension (PostgreSQL 13+): a database owner may create it.  It lives in
    # public, where every schema's search_path finds it.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public")
    op.create_index(
        "ix_lead_address_company_address_prefix",
        "lead_address",
        ["company_id", sa.literal_column("address text_pattern_ops")],
        schema="lead",
    )
    op.create_index(
        "ix_lead_name_trgm",
        "lead",
        [sa.literal_column("lower(name) public.gin_trgm_ops")],
        schema="lead",
        postgresql_using="gin",
    )
    op.create_index(
        "ix_lead_account_name_trgm",
        "lead",
        [sa.literal_column("lower(account_name) public.gin_trgm_ops")],
        schema="lead",
        postgresql_using="gin",
    )


def downgrade() -> None:
    op.drop_index("ix_lead_account_name_trgm", table_name="lead", schema="lead")
    op.drop_index("ix_lead_name_trgm", table_name="lead", schema="lead")
    op.drop_index(
        "ix_lead_address_company_address_prefix", table_name="lead_address", schema="lead"
    )
