"""Pytest fixtures on real parts, shared by every service's tests (loaded by the root conftest).

One PostgreSQL, one NATS JetStream and one Dovecot per test session, each on a
free loopback port, started by the same code as ``make run``.  Each test that
needs a database gets a fresh one cloned from a migrated template
(``CREATE DATABASE ... TEMPLATE``), so tests may commit freely.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import trustme

from leadline_kit.db import asyncpg_dsn
from leadline_kit.infra import DovecotServer, NatsServer, PostgresServer, free_port
from leadline_kit.migrations import upgrade
from leadline_kit.testing.oauth import FakeOAuthProvider

_templates: dict[str, str] = {}


@pytest.fixture(scope="session")
def infra_dir() -> Iterator[Path]:
    """Not under pytest's temporary root: every pytest session resets ``/tmp/pytest-of-<user>`` to
    mode 0700, which cuts the unprivileged database and mail users of a session still running in
    another checkout off their data (Dovecot then fails every APPEND with "Permission denied")."""
    path = Path(tempfile.mkdtemp(prefix="leadline-infra-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(infra_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(infra_dir / "postgres", free_port(), fast_unsafe=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_server(infra_dir: Path) -> Iterator[NatsServer]:
    server = NatsServer(infra_dir / "nats", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def dovecot(infra_dir: Path, tls_ca: trustme.CA) -> Iterator[DovecotServer]:
    cert = tls_ca.issue_cert("localhost", "127.0.0.1")
    server = DovecotServer(
        infra_dir / "dovecot",
        cert.cert_chain_pems[0].bytes() + tls_ca.cert_pem.bytes(),
        cert.private_key_pem.bytes(),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def oauth_provider() -> Iterator[FakeOAuthProvider]:
    """A local authorization server standing for Google's and Microsoft's (see
    leadline_kit.testing.oauth)."""
    provider = FakeOAuthProvider().start()
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def oauth_dovecot(
    infra_dir: Path, tls_ca: trustme.CA, oauth_provider: FakeOAuthProvider
) -> Iterator[DovecotServer]:
    """A Dovecot that also signs users in with access tokens the ``oauth_provider`` vouches for."""
    cert = tls_ca.issue_cert("localhost", "127.0.0.1")
    server = DovecotServer(
        infra_dir / "oauth-dovecot",
        cert.cert_chain_pems[0].bytes() + tls_ca.cert_pem.bytes(),
        cert.private_key_pem.bytes(),
        oauth2_introspection_url=f"{oauth_provider.url}/introspect",
    )
    server.start()
    yield server
    server.stop()


async def create_database(postgres: PostgresServer, name: str, template: str | None = None) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(postgres.admin_url))
    try:
        suffix = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{suffix}')
    finally:
        await conn.close()
    return postgres.url(name)


async def migrated_database(postgres: PostgresServer, *packages: str) -> str:
    """A fresh database holding the given services' schemas, migrated to head."""
    key = ",".join(packages)
    if key not in _templates:
        template = f"tmpl_{uuid.uuid4().hex[:12]}"
        url = await create_database(postgres, template)
        for package in packages:
            await upgrade(package, url)
        _templates[key] = template
    return await create_database(postgres, f"t_{uuid.uuid4().hex[:16]}", _templates[key])


@pytest.fixture
async def fresh_database(postgres: PostgresServer) -> AsyncIterator[str]:
    """An empty database (no schema), for tests of the shared plumbing."""
    yield await create_database(postgres, f"t_{uuid.uuid4().hex[:16]}")
