"""Mail Sync benchmark: historical sync against mbsync, header-scan rate, IDLE latency.

    uv run python bench/sync/run.py [--messages 5000] [--idle-samples 100]

Everything runs on loopback in this process's own servers (kit.infra):
PostgreSQL, NATS JetStream, Dovecot with a certificate for ``localhost``.

1. Seeds one Dovecot mailbox by IMAP APPEND: ``--messages`` messages (median
   ~8 KB, 2% with a 100 KB PDF attachment), 80% in INBOX from leads, 20% in
   Sent to leads; 1% involve a "rare" lead only.
2. Historical sync with every message matching a lead: the sync service and
   the lead service run in-process; the clock runs from ``PUT /v1/mail-sync``
   until every message is a ``mail.synced`` event on the stream, and until it
   is a timeline event of its lead.  Reference: ``mbsync`` (Debian isync,
   ``FSync no``) downloading the same two folders to a Maildir.  Ratio =
   ours / mbsync (lower is better; mbsync stores mail, we parse, match,
   publish and build timelines).
3. Header scan with 1% matching: a fresh sync database knowing only the rare
   lead; messages scanned per second until the historical sync completes.
4. IDLE latency: APPEND one message from a lead into INBOX, time until its
   ``mail.synced`` event arrives, and until it is on the lead's timeline;
   p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import ssl
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import asyncpg
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from mbsync import mbsync_seconds
from nats.aio.msg import Msg

from leadline_kit import bus
from leadline_kit.db import asyncpg_dsn
from leadline_kit.identity import Identity
from leadline_kit.infra import DovecotServer, NatsServer, PostgresServer, free_port
from leadline_kit.migrations import upgrade
from leadline_kit.testing.clients import as_caller, running_app
from leadline_kit.testing.delivery import deliver_locally
from leadline_kit.testing.fixtures import create_database
from leadline_lead.config import Settings as LeadSettings
from leadline_lead.main import create_app as create_lead_app
from leadline_mail.imap import ImapSettings, connect_imap
from leadline_mail.net import parse_allowlist
from leadline_proto.events import parse_event
from leadline_quota.config import Settings as QuotaSettings
from leadline_quota.main import create_app as create_quota_app
from leadline_sync.config import Settings as SyncSettings
from leadline_sync.main import create_app as create_sync_app

SECRET = "bench-identity-secret"
USER, PASSWORD = "bench@acme.example", "bench-password"
WORDS = (
    "deal proposal pricing meeting contract renewal invoice quarter demo follow up question thanks "
    "schedule call team budget timeline review offer discount support onboarding"
).split()


def body_text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return "\n".join(lines) + "\n"


def build_mailbox(count: int) -> list[tuple[str, bytes, str]]:
    """(folder, raw message, lead address) for every message."""
    rng = random.Random(5)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    mail: list[tuple[str, bytes, str]] = []
    for i in range(count):
        lead = "rare@prospect.example" if i % 100 == 0 else f"lead{i % 50}@customer{i % 50}.example"
        sent = i % 5 == 0
        msg = EmailMessage()
        msg["From"] = USER if sent else f"Lead {i % 50} <{lead}>"
        msg["To"] = lead if sent else USER
        msg["Subject"] = f"Re: {rng.choice(WORDS)} {i}"
        msg["Date"] = format_datetime(start + timedelta(minutes=7 * i))
        msg["Message-ID"] = f"<bench-{i}@acme.example>"
        msg.set_content(body_text(rng, max(500, int(rng.lognormvariate(8.9, 0.5)))))
        if i % 50 == 7:
            msg.add_attachment(
                rng.randbytes(100_000),
                maintype="application",
                subtype="pdf",
                filename=f"proposal-{i}.pdf",
            )
        mail.append(("Sent" if sent else "INBOX", msg.as_bytes(), lead))
    return mail


async def seed(dovecot: DovecotServer, cafile: str, mail: list[tuple[str, bytes, str]]) -> None:
    client = await connect_imap(imap_settings(dovecot, cafile))
    try:
        for folder, raw, _ in mail:
            await client.append(folder, raw)
    finally:
        await client.logout()


def imap_settings(dovecot: DovecotServer, cafile: str) -> ImapSettings:
    return ImapSettings(
        host="127.0.0.1",
        port=dovecot.tls_port,
        tls="implicit",
        username=USER,
        password=PASSWORD,
        cafile=cafile,
        allow_networks=parse_allowlist("127.0.0.0/8"),
    )


async def count(url: str, statement: str, *args: Any) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await conn.fetchval(statement, *args))
    finally:
        await conn.close()


async def wait_count(
    url: str, statement: str, target: int, *args: Any, timeout: float = 300
) -> float:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if int(await conn.fetchval(statement, *args)) >= target:
                return time.perf_counter()
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    raise TimeoutError(f"{statement} never reached {target}")


def sync_settings(url: str, nats_url: str, cafile: str) -> SyncSettings:
    return SyncSettings(
        database_url=url,
        nats_url=nats_url,
        identity_secret=SECRET,
        environment="test",
        sync_allow_networks="127.0.0.0/8",
        sync_ca_file=cafile,
        log_level="WARNING",
        consumer_prefix=f"bench-sync-{uuid.uuid4().hex[:8]}",
        db_pool_size=10,
    )


def lead_settings(url: str, nats_url: str) -> LeadSettings:
    return LeadSettings(
        database_url=url,
        nats_url=nats_url,
        identity_secret=SECRET,
        environment="test",
        log_level="WARNING",
        consumer_prefix=f"bench-lead-{uuid.uuid4().hex[:8]}",
    )


def connect_body(dovecot: DovecotServer, smtp_port: int) -> dict[str, Any]:
    return {
        "provider": "custom",
        "address": USER,
        "password": PASSWORD,
        "imap": {"host": "127.0.0.1", "port": dovecot.tls_port, "use_ssl": True},
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "use_ssl": False},
    }


def accept_bench_user(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == USER
        and auth_data.password.decode() == PASSWORD
    )
    return AuthResult(success=ok, handled=False)


def start_smtp(cert: trustme.LeafCert, dovecot: DovecotServer) -> Controller:
    """An SMTP server with STARTTLS and AUTH: connecting checks the SMTP login too, and proves the
    address by a message that this server delivers into the Dovecot user's INBOX."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    controller = Controller(
        Delivering(dovecot),
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=accept_bench_user,
        auth_require_tls=True,
        tls_context=context,
        require_starttls=True,
    )
    controller.start()
    return controller


@dataclass
class Delivering:
    dovecot: DovecotServer

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        deliver_locally(
            self.dovecot, envelope.rcpt_tos, envelope.original_content or envelope.content
        )
        return "250 OK"


async def run(messages: int, idle_samples: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="leadline-bench-sync-"))
    ca = trustme.CA()
    cafile = str(work / "ca.pem")
    ca.cert_pem.write_to_path(cafile)
    cert = ca.issue_cert("localhost", "127.0.0.1")
    postgres = PostgresServer(work / "postgres", free_port(), fast_unsafe=True)
    nats_server = NatsServer(work / "nats", free_port())
    dovecot = DovecotServer(
        work / "dovecot",
        cert.cert_chain_pems[0].bytes() + ca.cert_pem.bytes(),
        cert.private_key_pem.bytes(),
    )
    for server in (postgres, nats_server, dovecot):
        server.start()
    smtp = start_smtp(cert, dovecot)
    try:
        dovecot.add_user(USER, PASSWORD)
        mail = build_mailbox(messages)
        sizes = sorted(len(raw) for _, raw, _ in mail)
        started = time.perf_counter()
        await seed(dovecot, cafile, mail)
        print(
            f"seeded {messages} messages by APPEND in {time.perf_counter() - started:.1f} s "
            f"(median {sizes[len(sizes) // 2] / 1024:.1f} KB, {sum(sizes) / 2**20:.0f} MB)"
        )

        reference, downloaded = mbsync_seconds(
            port=dovecot.tls_port,
            user=USER,
            password=PASSWORD,
            cafile=cafile,
            work=work,
            fsync=False,
        )
        print(f"mbsync downloaded {downloaded} messages in {reference:.2f} s")

        # -- 2. historical sync of everything into events and timelines --------------------------
        # the quota service answers the mailbox-limit claims (no limit for these companies)
        quota_url = await create_database(postgres, "bench_quota")
        await upgrade("leadline_quota", quota_url)
        quota_app = create_quota_app(
            QuotaSettings(
                database_url=quota_url,
                nats_url=nats_server.url,
                identity_secret=SECRET,
                environment="test",
                log_level="WARNING",
            )
        )
        quota_running = running_app(quota_app)
        await quota_running.__aenter__()
        sync_url = await create_database(postgres, "bench_sync")
        lead_url = await create_database(postgres, "bench_lead")
        await upgrade("leadline_sync", sync_url)
        await upgrade("leadline_lead", lead_url)
        company = uuid.uuid4()
        user = Identity(company_id=company, user_id=uuid.uuid4(), role="salesperson")
        sync_app = create_sync_app(sync_settings(sync_url, nats_server.url, cafile))
        lead_app = create_lead_app(lead_settings(lead_url, nats_server.url))
        nc, _ = await bus.connect(nats_server.url, "bench")
        arrivals: dict[str, float] = {}

        async def on_synced(msg: Msg) -> None:
            event = parse_event(msg.data)
            message_id = getattr(event.payload, "message_id", "")
            arrivals.setdefault(message_id, time.perf_counter())

        await nc.subscribe("leadline.mail.synced.v1", cb=on_synced)
        async with running_app(sync_app) as sync_client, running_app(lead_app) as lead_client:
            leads = as_caller(lead_client, user, SECRET)
            lead_addresses = sorted({lead for _, _, lead in mail})
            for address in lead_addresses:
                response = await leads.post(
                    "/v1/leads", json={"name": address.split("@")[0], "addresses": [address]}
                )
                response.raise_for_status()
            await wait_count(
                sync_url, "SELECT count(*) FROM sync.lead_address", len(lead_addresses)
            )
            api = as_caller(sync_client, user, SECRET)
            started = time.perf_counter()
            cpu_started = time.process_time()
            response = await api.put("/v1/mail-sync", json=connect_body(dovecot, smtp.port))
            response.raise_for_status()
            synced_at = await wait_count(
                sync_url, "SELECT count(*) FROM sync.synced_message", messages
            )
            while len(arrivals) < messages and time.perf_counter() - synced_at < 120:
                await asyncio.sleep(0.02)
            events_at = max(arrivals.values())
            timelines_at = await wait_count(
                lead_url, "SELECT count(*) FROM lead.timeline_event", messages
            )
            ours_events = events_at - started
            ours_timelines = timelines_at - started
            cpu = time.process_time() - cpu_started
            print(
                f"historical sync: {messages} messages into mail.synced events in "
                f"{ours_events:.2f} s ({messages / ours_events:.0f}/s), into timelines in "
                f"{ours_timelines:.2f} s ({messages / ours_timelines:.0f}/s); this process (sync + "
                f"lead + quota services) used {cpu:.1f} s of CPU"
            )

            # -- 4. IDLE latency (this mailbox is now in live sync)
            # ---------------------------------
            client = await connect_imap(imap_settings(dovecot, cafile))
            lead_conn = await asyncpg.connect(asyncpg_dsn(lead_url))
            to_event: list[float] = []
            to_timeline: list[float] = []
            try:
                for i in range(idle_samples):
                    message_id = f"<idle-{i}-{uuid.uuid4().hex[:8]}@customer0.example>"
                    msg = EmailMessage()
                    msg["From"] = "lead0@customer0.example"
                    msg["To"] = USER
                    msg["Subject"] = f"live {i}"
                    msg["Date"] = format_datetime(datetime.now(UTC))
                    msg["Message-ID"] = message_id
                    msg.set_content(body_text(random.Random(i), 6000))
                    await client.append("INBOX", msg.as_bytes())
                    appended = time.perf_counter()
                    while True:
                        found = await lead_conn.fetchval(
                            "SELECT count(*) FROM lead.timeline_event WHERE message_id = $1",
                            message_id,
                        )
                        if found:
                            to_timeline.append(time.perf_counter() - appended)
                            break
                        await asyncio.sleep(0.005)
                    to_event.append(arrivals[message_id] - appended)
            finally:
                await client.logout()
                await lead_conn.close()
        await nc.close()

        # -- 3. header scan with 1% matching (a lead service of its own answers the lead directory)
        # ------
        scan_url = await create_database(postgres, "bench_scan")
        scan_lead_url = await create_database(postgres, "bench_scan_lead")
        await upgrade("leadline_sync", scan_url)
        await upgrade("leadline_lead", scan_lead_url)
        company = uuid.uuid4()
        user = Identity(company_id=company, user_id=uuid.uuid4(), role="salesperson")
        scan_app = create_sync_app(sync_settings(scan_url, nats_server.url, cafile))
        scan_lead_app = create_lead_app(lead_settings(scan_lead_url, nats_server.url))
        async with running_app(scan_app) as sync_client, running_app(scan_lead_app) as lead_client:
            response = await as_caller(lead_client, user, SECRET).post(
                "/v1/leads", json={"name": "rare", "addresses": ["rare@prospect.example"]}
            )
            response.raise_for_status()
            await wait_count(scan_url, "SELECT count(*) FROM sync.lead_address", 1)
            api = as_caller(sync_client, user, SECRET)
            started = time.perf_counter()
            (
                await api.put("/v1/mail-sync", json=connect_body(dovecot, smtp.port))
            ).raise_for_status()
            done_at = await wait_count(
                scan_url,
                "SELECT count(*) FROM sync.mailbox WHERE history_completed_at IS NOT NULL",
                1,
            )
            scan_seconds = done_at - started
            matched = await count(scan_url, "SELECT count(*) FROM sync.synced_message")

        def pct(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

        print()
        print("== Leadline sync benchmark (bench/sync/run.py) ==")
        print(
            f"mailbox: {messages} messages, median {sizes[len(sizes) // 2] / 1024:.1f} KB, "
            f"{sum(sizes) / 2**20:.0f} MB, INBOX + Sent"
        )
        print(
            f"mbsync (isync, FSync no) download:          {reference:7.2f} s  "
            f"({messages / reference:6.0f} msg/s)"
        )
        print(
            f"historical sync -> mail.synced events:      {ours_events:7.2f} s  "
            f"({messages / ours_events:6.0f} msg/s)"
            f"  ratio vs mbsync {ours_events / reference:.2f}x"
        )
        print(
            f"historical sync -> lead timelines:          {ours_timelines:7.2f} s  "
            f"({messages / ours_timelines:6.0f} msg/s)  ratio vs mbsync "
            f"{ours_timelines / reference:.2f}x"
        )
        print(
            f"CPU of the in-process services during the historical sync: {cpu:.1f} s "
            f"({1000 * cpu / messages:.2f} ms per message; load average {os.getloadavg()[0]:.1f})"
        )
        print(
            f"header scan, 1% matching ({matched} matched):   {scan_seconds:7.2f} s  "
            f"({messages / scan_seconds:6.0f} msg/s scanned)"
        )
        print(
            f"IDLE latency APPEND -> mail.synced event:   p50 {pct(to_event, 0.5):6.0f} ms  "
            f"p99 {pct(to_event, 0.99):6.0f} ms  (n={len(to_event)})"
        )
        print(
            f"IDLE latency APPEND -> lead timeline:       p50 {pct(to_timeline, 0.5):6.0f} ms  "
            f"p99 {pct(to_timeline, 0.99):6.0f} ms  (n={len(to_timeline)})"
        )
        print(
            f"command: uv run python bench/sync/run.py --messages {messages} --idle-samples "
            f"{idle_samples}"
        )
        await quota_running.__aexit__(None, None, None)
    finally:
        smtp.stop()
        for server in (dovecot, nats_server, postgres):
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--idle-samples", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.idle_samples))


if __name__ == "__main__":
    main()
