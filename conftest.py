"""Fixtures on real parts for every test in the repository (see leadline_kit.testing)."""

pytest_plugins = ["leadline_kit.testing.fixtures"]
