"""Cross-service flows: the whole suite started by ``deploy/run.py`` (what ``make run`` does).

The suite runs against the session's PostgreSQL (a fresh database) and NATS,
on a free block of loopback ports, with the operator settings the tests need
(loopback mail hosts allowed, the test CA trusted).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from leadline_kit.infra import DovecotServer, NatsServer, PostgresServer, free_port
from tests.mail_servers import SmtpServer

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Suite:
    gateway: str
    bootstrap_token: str
    data_dir: Path
    process: subprocess.Popen[bytes]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway, timeout=30)


def _free_block(size: int) -> int:
    for _ in range(200):
        base = random.randint(20000, 40000)
        try:
            sockets = []
            for port in range(base, base + size):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    raise RuntimeError("no free block of ports")


@pytest.fixture(scope="package")
def suite(
    postgres: PostgresServer, tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Suite]:
    import asyncio

    from leadline_kit.testing.fixtures import create_database

    data_dir = tmp_path_factory.mktemp("suite")
    # its own NATS: a fresh service replays the stream from the start, and the session's stream holds
    # every other test's events by now
    nats_server = NatsServer(data_dir / "nats", free_port())
    nats_server.start()
    ca_file = data_dir / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    database_url = asyncio.run(create_database(postgres, f"suite_{uuid.uuid4().hex[:8]}"))
    base = _free_block(
        7
    )  # the gateway, four services, the send delivery process and the mail sink (deploy/run.py)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": nats_server.url,
        "LEADLINE_DATA_DIR": str(data_dir),
        "LEADLINE_PORT_BASE": str(base),
        "LEADLINE_LOG_LEVEL": "INFO",
        # operator settings: the test mail servers live on loopback and use the test CA
        "LEADLINE_SYNC_ALLOW_NETWORKS": "127.0.0.0/8",
        "LEADLINE_SYNC_CA_FILE": str(ca_file),
        "LEADLINE_SYNC_POLL_SECONDS": "2",
        "LEADLINE_SYNC_SCHEDULE_INTERVAL": "0.5",
        "LEADLINE_MAIL_ALLOW_NETWORKS": "127.0.0.0/8",
        "LEADLINE_MAIL_CAFILE": str(ca_file),
        "LEADLINE_READY_SECONDS": "300",
    }
    log = (data_dir / "run.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy" / "run.py")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    gateway = f"http://127.0.0.1:{base}"
    deadline = time.monotonic() + 330
    ready = False
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(gateway + "/readyz", timeout=3).status_code == 200:
                ready = True
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    if not ready:
        process.terminate()
        process.wait(30)
        logs = (
            "\n".join(
                f"--- {p.name}\n{p.read_text()[-3000:]}"
                for p in sorted((data_dir / "logs").glob("*.log"))
            )
            if (data_dir / "logs").exists()
            else ""
        )
        pytest.fail(
            f"the suite did not become ready:\n{(data_dir / 'run.log').read_text()[-3000:]}\n{logs}"
        )
    secrets = dict(
        line.split("=", 1) for line in (data_dir / "secrets.env").read_text().splitlines()
    )
    yield Suite(
        gateway=gateway,
        bootstrap_token=secrets["LEADLINE_BOOTSTRAP_TOKEN"],
        data_dir=data_dir,
        process=process,
    )
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
    nats_server.stop()


@pytest.fixture(scope="session")
def smtp_server(tls_ca: trustme.CA, dovecot: DovecotServer) -> Iterator[SmtpServer]:
    server = SmtpServer(tls_ca, dovecot)
    server.start()
    yield server
    server.stop()
