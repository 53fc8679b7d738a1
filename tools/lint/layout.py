"""SQL lives in repositories (CONTRIBUTING:
``<domain>/{endpoints,service,repository,schemas,consumers}``).

A module of a service that builds a statement (calls SQLAlchemy's ``select``, ``insert``,
``update``, ``delete`` or ``text``, or a table's ``insert()`` / ``update()`` / ``delete()``, or
holds a plain-SQL string for asyncpg, ``"SELECT ..."``) is a ``repository.py``, the
service's ``models.py`` or a migration; any other fails until its statements move to a repository.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tools.lint.scope import RAW_SQL, SERVICES, Violation

_CONSTRUCTORS = {"select", "insert", "update", "delete", "text"}


def builds_statements(source: str) -> bool:
    tree = ast.parse(source)
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy")
        for alias in node.names
        if alias.name in _CONSTRUCTORS
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and RAW_SQL.match(node.value)
        ):
            return True
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id in imported:
            return True
        if (
            isinstance(node.func, ast.Attribute)
            and node.func.attr in {"insert", "update", "delete"}
            and not node.args
            and not node.keywords
            and isinstance(node.func.value, ast.Name | ast.Attribute)
        ):
            return True
    return False


def _allowed(path: Path) -> bool:
    return path.name in {"repository.py", "models.py"} or "migrations" in path.parts


def check_tree(root: Path) -> list[Violation]:
    return [
        Violation(
            str(path.relative_to(root)), 1, "builds SQL statements: move them to a repository.py"
        )
        for folder in SERVICES
        for path in sorted((root / folder / "src").rglob("*.py"))
        if not _allowed(path) and builds_statements(path.read_text())
    ]
