"""Autogenerate a service's next Alembic revision against a scratch PostgreSQL.

    uv run python deploy/new_migration.py leadline_lead "what changed"

Starts a throwaway PostgreSQL, applies the service's history, compares it with
the service's metadata and writes the new revision into its migrations/versions.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from alembic import command

from leadline_kit.infra import PostgresServer, free_port
from leadline_kit.migrations import alembic_config
from leadline_kit.testing.fixtures import create_database


def main(package: str, message: str) -> None:
    postgres = PostgresServer(Path(tempfile.mkdtemp()) / "pg", free_port(), fast_unsafe=True)
    postgres.start()
    try:
        config = alembic_config(package, asyncio.run(create_database(postgres, "scratch")))
        command.upgrade(config, "head")
        command.revision(config, message=message, autogenerate=True)
    finally:
        postgres.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
