"""Autogenerate a service's next Alembic revision against a scratch PostgreSQL.

    uv run python deploy/new_migration.py leadline_lead "what changed"

Starts a throwaway PostgreSQL, applies the service's history, compares it with
the service's metadata and writes the new revision into its migrations/versions.
"""

import asyncio, sys, tempfile
from pathlib import Path
from alembic import command
from leadline_kit.infra import PostgresServer, free_port
from leadline_kit.migrations import alembic_config
from leadline_kit.testing.fixtures import create_database
pkg, msg = sys.argv[1], sys.argv[2]
pg = PostgresServer(Path(tempfile.mkdtemp())/"pg", free_port(), fast_unsafe=True); pg.start()
try:
    url = asyncio.run(create_database(pg, "scratch"))
    cfg = alembic_config(pkg, url)
    command.upgrade(cfg, "head")
    command.revision(cfg, message=msg, autogenerate=True)
finally:
    pg.stop()
