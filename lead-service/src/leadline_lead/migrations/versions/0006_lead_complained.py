"""lead.complained_at and the timeline kind complaint: a feedback report about mail to the lead

Revision ID: 0006_lead_complained
Revises: 0005_lead_bounced
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_lead_complained"
down_revision: str | None = "0005_lead_bounced"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = "'email_received', 'email_sent', 'smart_mail_sent', 'bounce', 'delivery_delayed'"


def upgrade() -> None:
    op.add_column(
        "lead", sa.Column("complained_at", sa.DateTime(timezone=True), nullable=True), schema="lead"
    )
    op.drop_constraint(
        op.f("ck_timeline_event_kind"), "timeline_event", schema="lead", type_="check"
    )
    op.create_check_constraint(
        op.f("ck_timeline_event_kind"),
        "timeline_event",
        f"kind IN ({KINDS}, 'complaint')",
        schema="lead",
    )


def downgrade() -> None:
    op.execute("DELETE FROM lead.timeline_event WHERE kind = 'complaint'")
    op.drop_constraint(
        op.f("ck_timeline_event_kind"), "timeline_event", schema="lead", type_="check"
    )
    op.create_check_constraint(
        op.f("ck_timeline_event_kind"), "timeline_event", f"kind IN ({KINDS})", schema="lead"
    )
    op.drop_column("lead", "complained_at", schema="lead")
