"""One named problem per kind, raised by name (style.md; polar's named domain errors).

A problem's kind is its ``slug`` (the ``type`` of the problem document). Each kind is a class, in
its service's ``problems.py`` or, when more than one service answers with it, in
``leadline_kit.errors``; a raise site names the class (``raise LeadNotFound("no such lead")``),
never a slug. The lint fails on:

- a ``slug="..."`` literal (or f-string) passed to a call: raise the named class instead;
- a slug that two classes define: one kind, one class.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tools.lint.scope import Violation

FOLDERS = ("kit", "gateway", "lead-service", "quota-service", "sync-service", "send-service")


def _class_slugs(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, slug) of each class body that sets ``slug`` (``slug = "x"`` or ``status, slug, title =
    ...``)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for statement in node.body:
            if not isinstance(statement, ast.Assign) or len(statement.targets) != 1:
                continue
            target, value = statement.targets[0], statement.value
            pairs = (
                list(zip(target.elts, value.elts, strict=False))
                if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                else [(target, value)]
            )
            for name, given in pairs:
                if (
                    isinstance(name, ast.Name)
                    and name.id == "slug"
                    and isinstance(given, ast.Constant)
                ):
                    yield statement.lineno, str(given.value)


def _slug_arguments(tree: ast.AST) -> Iterator[ast.keyword]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "slug" and isinstance(
                    keyword.value, ast.Constant | ast.JoinedStr
                ):
                    yield keyword


def check_sources(sources: dict[str, str]) -> list[Violation]:
    """``sources``: path -> text of every module of the tree (the slug of a kind is unique across
    them)."""
    found: list[Violation] = []
    defined: dict[str, tuple[str, int]] = {}
    for path, source in sorted(sources.items()):
        tree = ast.parse(source, path)
        for keyword in _slug_arguments(tree):
            found.append(
                Violation(
                    path,
                    keyword.lineno,
                    (
                        "a slug at a raise site: raise the problem's named class (its service's "
                        "problems.py)"
                    ),
                )
            )
        for line, slug in _class_slugs(tree):
            if slug in defined:
                first, first_line = defined[slug]
                found.append(
                    Violation(
                        path,
                        line,
                        f"problem {slug!r} is defined again (first at {first}:{first_line})",
                    )
                )
            else:
                defined[slug] = (path, line)
    return found


def check_tree(root: Path) -> list[Violation]:
    sources = {
        str(path.relative_to(root)): path.read_text()
        for folder in FOLDERS
        for path in sorted((root / folder / "src").rglob("*.py"))
        if "migrations" not in path.parts
    }
    return check_sources(sources)
