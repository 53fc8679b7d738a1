"""Alembic, one history per service, each in its own PostgreSQL schema.

Each service's ``migrations/env.py`` is two lines: import the service's
metadata and call :func:`run_env`.  :func:`upgrade` applies a service's
history programmatically (``make run``, tests); concurrent upgrades of the
same schema are serialised by an advisory lock.

CLI: ``python -m leadline_kit.migrations upgrade leadline_lead [URL]`` and
``python -m leadline_kit.migrations revision leadline_lead -m "what changed"``.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


def alembic_config(package: str, url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", f"{package}:migrations")
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def upgrade(package: str, url: str) -> None:
    await asyncio.to_thread(command.upgrade, alembic_config(package, url), "head")


def run_env(metadata: MetaData) -> None:
    """Body of every service's ``env.py`` (online mode, async engine)."""
    from alembic import context

    schema = metadata.schema
    assert schema, "service metadata must name its schema"
    url = context.config.get_main_option("sqlalchemy.url")
    assert url

    def migrate(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table_schema=schema,
            include_schemas=True,
            include_name=lambda name, type_, _: type_ != "schema" or name == schema,
        )
        with context.begin_transaction():
            connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": f"migrate:{schema}"}
            )
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        async with engine.connect() as connection:
            await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await connection.commit()
            await connection.run_sync(migrate)
        await engine.dispose()

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m leadline_kit.migrations")
    parser.add_argument("action", choices=["upgrade", "revision"])
    parser.add_argument("package", help="service package, e.g. leadline_lead")
    parser.add_argument("url", nargs="?", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("-m", "--message", default="change")
    args = parser.parse_args()
    if args.action == "upgrade":
        asyncio.run(upgrade(args.package, args.url))
    else:
        command.revision(
            alembic_config(args.package, args.url), message=args.message, autogenerate=True
        )


if __name__ == "__main__":
    main()
