"""The company_id lint finds a planted unscoped query, and lets scoped and reasoned ones pass."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tools.lint.scope import TenantTables, Violation, check_source, check_tree

ROOT = Path(__file__).resolve().parents[2]
PATH = "send-service/src/leadline_send/planted.py"
HEADER = """\
from sqlalchemy import delete, select, text, update
from leadline_send.models import outgoing_message, smtp_account
from leadline_send.models import send_attempt as a
"""


@pytest.fixture(scope="module")
def tenants() -> TenantTables:
    return TenantTables.of_services()


def lint(tenants: TenantTables, body: str, path: str = PATH) -> list[Violation]:
    return check_source(HEADER + textwrap.dedent(body), path, tenants)


def test_the_tenant_tables_are_those_with_a_company_id(tenants: TenantTables) -> None:
    send = tenants.by_module["leadline_send.models"]
    assert send["outgoing_message"] == "outgoing_message"
    assert "send_attempt" not in send  # keyed by its message, no company_id of its own
    assert (
        "company" not in tenants.by_module["leadline_gateway.models"]
    )  # the company is the tenant


def test_a_planted_unscoped_query_in_a_real_module_fails(tenants: TenantTables) -> None:
    path = ROOT / "send-service/src/leadline_send/messages/repository.py"
    source = path.read_text()
    assert check_source(source, str(path), tenants) == []
    planted = source + textwrap.dedent("""

        async def every_message(session, message_id):
            return await session.execute(select(*SHOWN).where(outgoing_message.c.id == message_id))
    """)
    found = check_source(planted, str(path), tenants)
    assert [v.line for v in found] == [len(source.splitlines()) + 4]
    assert "outgoing_message" in found[0].message


@pytest.mark.parametrize(
    "body",
    [
        "q = select(outgoing_message).where(outgoing_message.c.id == 1)",
        "q = update(smtp_account).where(smtp_account.c.id == 1).values(error=None)",
        "q = delete(outgoing_message).where(outgoing_message.c.id == 1)",
        "q = smtp_account.delete().where(smtp_account.c.active)",
        "q = select(a.c.phase).join(outgoing_message, outgoing_message.c.id == a.c.message_id)",
        "q = text('SELECT id FROM send.outgoing_message WHERE id = :id')",
        "q = select(outgoing_message.c.id)",
        'CLAIM = "UPDATE outgoing_message SET state = $1 WHERE id = $2 RETURNING company_id"',
    ],
    ids=["select", "update", "delete", "table.delete", "joined", "text", "no where", "plain SQL"],
)
def test_each_kind_of_unscoped_query_fails(tenants: TenantTables, body: str) -> None:
    assert [v.line for v in lint(tenants, body)] == [4]


@pytest.mark.parametrize(
    "body",
    [
        "q = select(outgoing_message).where(outgoing_message.c.company_id == c, outgoing_message.c.id == 1)",
        "q = select(a.c.phase)",  # no tenant table
        "q = update(smtp_account).filter_by(company_id=c)",
        "q = text('SELECT id FROM outgoing_message WHERE company_id = :c')",
        'LOOKUP = """\nSELECT id FROM outgoing_message m WHERE m.company_id = $1 AND m.id = $2\n"""',
        """
        def rows(company_id):
            where = [outgoing_message.c.state == 'queued']
            where.append(outgoing_message.c.company_id == company_id)
            return select(outgoing_message).where(*where)
        """,
        """
        async def later(session, caller):
            query = select(outgoing_message)
            if caller:
                query = query.where(outgoing_message.c.company_id == caller.company_id)
            return query
        """,
        """
        async def by_row(session, company_id):
            row = (await session.execute(
                select(outgoing_message).where(outgoing_message.c.company_id == company_id)
            )).one()
            await session.execute(update(outgoing_message).where(outgoing_message.c.id == row.id))
        """,
        """
        def nested(company_id):
            inner = select(smtp_account.c.id).where(smtp_account.c.active)
            return select(outgoing_message).where(
                outgoing_message.c.company_id == company_id, outgoing_message.c.account_key.in_(inner)
            )
        """,
        """
        # unscoped: housekeeping over every company's rows
        q = delete(outgoing_message).where(outgoing_message.c.id == 1)
        """,
        "q = select(outgoing_message).where(outgoing_message.c.id == 1)  # unscoped: a worker's own claimed row",
    ],
    ids=[
        "scoped",
        "not a tenant table",
        "filter_by",
        "text",
        "plain SQL",
        "a list of conditions",
        "a where added later",
        "by the id of a scoped row",
        "a subquery of a scoped query",
        "exemption above",
        "exemption on the line",
    ],
)
def test_scoped_and_exempted_queries_pass(tenants: TenantTables, body: str) -> None:
    assert lint(tenants, body) == []


def test_an_exemption_needs_a_reason(tenants: TenantTables) -> None:
    found = lint(tenants, "q = select(outgoing_message)  # unscoped: ok")
    assert [v.message for v in found] == [
        "an '# unscoped:' exemption needs a reason of a few words"
    ]


def test_an_exemption_with_no_query_under_it_fails(tenants: TenantTables) -> None:
    found = lint(tenants, "# unscoped: this query went away long ago\nx = 1\n")
    assert len(found) == 1
    assert "no unscoped query under it" in found[0].message


def test_a_query_on_a_table_passed_in_cannot_be_told(tenants: TenantTables) -> None:
    found = lint(tenants, "def page(table, where):\n    return select(table).where(where)\n")
    assert len(found) == 1
    assert "<table>" in found[0].message


def test_the_tree_is_clean() -> None:
    assert [str(v) for v in check_tree(ROOT)] == []
