"""Fixtures on real parts for every test in the repository (see leadline_kit.testing)."""

from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = ["leadline_kit.testing.fixtures"]

SUITE_TESTS = "tests/"
"""Every test here runs on the whole suite (the ``suite`` fixture: ``deploy/run.py``'s services)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The whole suite's tests first: under ``make test``'s two workers its start is the longest,
    and the other worker works through the rest meanwhile."""
    items.sort(key=lambda item: not item.nodeid.startswith(SUITE_TESTS))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``make test`` (``-n 2 --dist loadfile``): each file's tests on one worker, one after the
    other, as written (module fixtures are built once), and every test of ``tests/`` on one worker,
    so that the suite starts once.  (pytest-xdist's ``loadgroup`` cannot do this on pytest 9: it
    renames ``item._nodeid``, which pytest no longer reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesAndTheSuite(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return SUITE_TESTS if nodeid.startswith(SUITE_TESTS) else super()._split_scope(nodeid)

    return FilesAndTheSuite(config, log)
