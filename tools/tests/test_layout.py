"""The layout lint tells a module that builds SQL from one that does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.lint.layout import builds_statements, check_tree

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "source",
    [
        "from sqlalchemy import select\nq = select(t)\n",
        "from sqlalchemy.dialects.postgresql import insert\nq = insert(t).values(a=1)\n",
        "from sqlalchemy import text as sql\nq = sql('SELECT 1')\n",
        "q = models.user.delete()\n",
        'LOOKUP = """\nSELECT id FROM api_key WHERE id = $1\n"""\n',
    ],
)
def test_a_statement_is_seen(source: str) -> None:
    assert builds_statements(source)


@pytest.mark.parametrize(
    "source",
    [
        "from sqlalchemy import Row\nrows: list[Row] = []\n",
        "from leadline_quota.reservations import repository\nawait repository.prune(session, now)\n",
        "values.update(a=1)\nawait client.select('INBOX')\n",
    ],
)
def test_no_statement_is_seen(source: str) -> None:
    assert not builds_statements(source)


def test_the_tree_is_clean() -> None:
    assert [str(v) for v in check_tree(ROOT)] == []
