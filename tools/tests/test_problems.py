"""The problem lint finds a slug at a raise site and a kind defined twice."""

from __future__ import annotations

from pathlib import Path

from tools.lint.problems import check_sources, check_tree

ROOT = Path(__file__).resolve().parents[2]


def test_a_slug_at_a_raise_site_fails() -> None:
    source = 'raise NotFound("no such lead", slug="lead-not-found")\nraise Unprocessable("x", slug=f"invalid-{k}")\n'
    assert [v.line for v in check_sources({"a.py": source})] == [1, 2]


def test_a_named_problem_passes() -> None:
    problems = 'class LeadNotFound(NotFound):\n    slug = "lead-not-found"\n'
    assert (
        check_sources({"problems.py": problems, "a.py": 'raise LeadNotFound("no such lead")\n'})
        == []
    )


def test_a_kind_defined_twice_fails() -> None:
    one = 'class LeadNotFound(NotFound):\n    slug = "lead-not-found"\n'
    two = 'class NoLead(Problem):\n    status, slug, title = 404, "lead-not-found", "No lead"\n'
    found = check_sources({"a/problems.py": one, "b/problems.py": two})
    assert [(v.path, v.line) for v in found] == [("b/problems.py", 2)]
    assert "a/problems.py:2" in found[0].message


def test_the_tree_is_clean() -> None:
    assert [str(v) for v in check_tree(ROOT)] == []
