"""SQL lives in repositories (CONTRIBUTING:
``<domain>/{endpoints,service,repository,schemas,consumers}``).

A module of a service that builds a statement (calls SQLAlchemy's ``select``, ``insert``,
``update``, ``delete`` or ``text``, or a table's ``insert()`` / ``update()`` / ``delete()``, or
holds a plain-SQL string for asyncpg, ``"SELECT ..."``) is a ``repository.py``, the
service's ``models.py``, a migration, or one of :data:`NOT_YET`: the modules that still write their
own SQL, each with why it has not moved. The list only shrinks: a module that no longer builds
statements is reported until its entry goes, and a new one fails until its statements move to a
repository.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tools.lint.scope import RAW_SQL, SERVICES, Violation

_CONSTRUCTORS = {"select", "insert", "update", "delete", "text"}

# path under the repository root -> why its statements are still its own (none left: every module
# of a service builds its SQL in a repository; a module that must not be moved yet goes here, with
# why)
NOT_YET: dict[str, str] = {}


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
    found: list[Violation] = []
    building: set[str] = set()
    for folder in SERVICES:
        for path in sorted((root / folder / "src").rglob("*.py")):
            relative = str(path.relative_to(root))
            if _allowed(path) or not builds_statements(path.read_text()):
                continue
            building.add(relative)
            if relative not in NOT_YET:
                found.append(
                    Violation(relative, 1, "builds SQL statements: move them to a repository.py")
                )
    for relative in sorted(set(NOT_YET) - building):
        found.append(
            Violation(
                relative,
                1,
                "builds no SQL statement any more (or is gone): drop it from layout.NOT_YET",
            )
        )
    return found
