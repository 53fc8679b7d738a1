"""timeline kind delivery_delayed: a soft bounce (4.x.x, Action: delayed) shows apart from a bounce (R17)

Revision ID: 0003_delivery_delayed
Revises: 0002_lead_search
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_delivery_delayed"
down_revision: str | None = "0002_lead_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = "'email_received', 'email_sent', 'smart_mail_sent', 'bounce'"


def upgrade() -> None:
    op.drop_constraint(
        op.f("ck_timeline_event_kind"), "timeline_event", schema="lead", type_="check"
    )
    op.create_check_constraint(
        op.f("ck_timeline_event_kind"),
        "timeline_event",
        f"kind IN ({KINDS}, 'delivery_delayed')",
        schema="lead",
    )


def downgrade() -> None:
    op.execute("DELETE FROM lead.timeline_event WHERE kind = 'delivery_delayed'")
    op.drop_constraint(
        op.f("ck_timeline_event_kind"), "timeline_event", schema="lead", type_="check"
    )
    op.create_check_constraint(
        op.f("ck_timeline_event_kind"), "timeline_event", f"kind IN ({KINDS})", schema="lead"
    )
