"""bench/send's default: Smart Mail on the path a CRM takes, against raw aiosmtplib loops to the
same server.

The whole suite runs as ``make run`` runs it (``deploy/run.py``: the gateway, the five services, the
send service's API and delivery processes, PostgreSQL with fsync), on a PostgreSQL and NATS of the
bench's own, with the operator settings that open loopback mail hosts and trust the bench's CA, and
the gateway's per-key rate limit set by ``--rate-limit`` (default: lifted).  The far end is a
Dovecot (the mailbox's IMAP, the Sent folder) and aiosmtpd with implicit TLS and AUTH
(``smtp_server.py`` says why not ``smtp-sink``).  A company's administrator connects their own
mailbox (``PUT /v1/mail-sync``, implicit TLS for IMAP and SMTP), creates one lead per message, and
each Smart Mail is one ``POST /v1/messages`` through the gateway to one lead, from ``--clients``
concurrent callers.  A run's clock runs from the first POST until every message is ``sent`` and its
copy is in the Sent folder (``sent_copy`` recorded; Dovecot's Sent folder is counted before and
after: exactly one copy each).

References, in the same round just before the path runs, over the same number of connections, with
the same TLS, AUTH and server: ``raw``, an aiosmtplib loop building each ``EmailMessage`` and
sending it with ``send_message``; ``raw + APPEND``, the same loop also appending each message to the
Sent folder on a kept IMAP connection (what R12 asks, done naively).

The breakdown is what the processes report about the run (their Prometheus histograms and counters,
scraped before and after) and the CPU each process used, per message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import aioimaplib
import aiosmtplib
import asyncpg
import httpx
import trustme
from common import BODY, cpu_by_command

from leadline_kit.db import asyncpg_dsn
from leadline_kit.infra import DovecotServer, NatsServer, PostgresServer, free_port, wait_for_port
from leadline_kit.testing.fixtures import create_database

ROOT = Path(__file__).resolve().parents[2]
# the first found in a command line names the process: smtp_server.py's names Dovecot's folder
PROCESSES = (
    "leadline_gateway",
    "leadline_lead",
    "leadline_quota",
    "leadline_sync",
    "leadline_send",
    "postgres",
    "nats-server",
    "smtp_server.py",
    "dovecot",
    "bench/send",
)
# what a reference loop's CPU is spent by
REFERENCE_PROCESSES = ("bench/send", "smtp_server.py", "dovecot")
LIFTED = 1_000_000.0  # requests per second per key: the gateway's rate limit out of the way
ADDRESS, PASSWORD = "sam@acme.example", "bench-mailbox-password"


@dataclass
class MailServers:
    """The mailbox's far end: Dovecot (IMAP over implicit TLS) and aiosmtpd (SMTP over implicit
    TLS)."""

    imap_port: int
    smtp_port: int
    ca_file: str

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def connect_body(self) -> dict[str, object]:
        """The ``PUT /v1/mail-sync`` body that connects the bench's mailbox to these servers."""
        return {
            "provider": "custom",
            "address": ADDRESS,
            "password": PASSWORD,
            "imap": {"host": "localhost", "port": self.imap_port, "use_ssl": True},
            "smtp": {"host": "localhost", "port": self.smtp_port, "use_ssl": True},
        }

    def sent_count(self) -> int:
        imap = imaplib.IMAP4_SSL("localhost", self.imap_port, ssl_context=self.tls())
        imap.login(ADDRESS, PASSWORD)
        status = imap.status("Sent", "(MESSAGES)")[1][0]
        imap.logout()
        found = re.search(rb"MESSAGES (\d+)", status if isinstance(status, bytes) else b"")
        assert found, status
        return int(found.group(1))


@contextlib.contextmanager
def mail_servers(tmp: Path) -> Iterator[MailServers]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "smtp-cert.pem", tmp / "smtp-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    dovecot = DovecotServer(
        tmp / "dovecot", cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes()
    )
    dovecot.start()
    dovecot.add_user(ADDRESS, PASSWORD)
    smtp_port = free_port()
    smtp = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "smtp_server.py"),
            str(smtp_port),
            str(cert_file),
            str(key_file),
            ADDRESS,
            PASSWORD,
            str(dovecot.base_dir),
        ]
    )
    try:
        wait_for_port(smtp_port, timeout=120)
        yield MailServers(imap_port=dovecot.tls_port, smtp_port=smtp_port, ca_file=str(ca_file))
    finally:
        smtp.terminate()
        smtp.wait()
        dovecot.stop()


@dataclass
class Suite:
    gateway: str
    base: int
    bootstrap_token: str
    metrics_token: str
    marker: str  # the bench's temporary folder, in the command line of its daemonised servers

    def port(self, offset: int) -> str:
        return f"http://127.0.0.1:{self.base + offset}"


def _ready(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=3).status_code == 200:
                return True
        time.sleep(0.5)
    return False


@contextlib.contextmanager
def suite(
    data_dir: Path,
    database_url: str,
    nats_url: str,
    servers: MailServers,
    connections: int,
    rate_limit: float | None,
    source: Path | None,
) -> Iterator[Suite]:
    """``deploy/run.py`` with the bench's servers, ``connections`` delivery workers and the rate
    limit; ``source``: another checkout of the repository whose code the suite runs (before and
    after figures)."""
    base = free_port_block(6)
    tree = source or ROOT
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "LEADLINE_DATA_DIR": str(data_dir),
        "LEADLINE_PORT_BASE": str(base),
        "LEADLINE_LOG_LEVEL": "WARNING",
        "LEADLINE_SYNC_ALLOW_NETWORKS": "127.0.0.0/8",
        "LEADLINE_SYNC_CA_FILE": servers.ca_file,
        "LEADLINE_MAIL_ALLOW_NETWORKS": "127.0.0.0/8",
        "LEADLINE_MAIL_CAFILE": servers.ca_file,
        "LEADLINE_SMTP_CONNECTIONS": str(connections),
        "LEADLINE_READY_SECONDS": "600",
    }
    if source is not None:
        env["PYTHONPATH"] = ":".join(str(p) for p in sorted(source.glob("*/src")))
    limit = LIFTED if rate_limit is None else rate_limit
    env["LEADLINE_RATE_LIMIT_PER_SECOND"] = str(limit)
    env["LEADLINE_RATE_LIMIT_BURST"] = str(max(1, int(limit * 4)))
    log = (data_dir / f"run-{connections}.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, str(tree / "deploy" / "run.py")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        found = Suite(
            gateway=f"http://127.0.0.1:{base}",
            base=base,
            bootstrap_token="",
            metrics_token="",
            marker=str(data_dir),
        )
        # a loaded machine: the suite's processes start for minutes
        deadline = time.monotonic() + 630
        if not (
            _ready(found.gateway + "/readyz", deadline)
            and _ready(found.port(5) + "/readyz", deadline)
        ):
            kept = Path(tempfile.mkdtemp(prefix="send-bench-logs-"))
            shutil.copytree(data_dir / "logs", kept / "logs", dirs_exist_ok=True)
            shutil.copy(log.name, kept)
            raise RuntimeError(f"the suite did not become ready; its logs are in {kept}")
        secrets = dict(
            line.split("=", 1) for line in (data_dir / "secrets.env").read_text().splitlines()
        )
        found.bootstrap_token = secrets["LEADLINE_BOOTSTRAP_TOKEN"]
        found.metrics_token = secrets.get("LEADLINE_METRICS_TOKEN", "")
        yield found
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def free_port_block(size: int) -> int:
    import random
    import socket

    for _ in range(200):
        start = random.randint(20000, 40000)
        sockets: list[socket.socket] = []
        try:
            for port in range(start, start + size):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return start
    raise RuntimeError("no free block of ports")


@dataclass
class Account:
    key: str  # the administrator's API key
    lead_ids: list[str]


async def set_up(found: Suite, servers: MailServers, leads: int) -> Account:
    """A company, its administrator's own mailbox connected through the API, one lead per
    message."""
    async with httpx.AsyncClient(base_url=found.gateway, timeout=60) as client:
        created = await client.post(
            "/v1/companies",
            headers={"Authorization": f"Bearer {found.bootstrap_token}"},
            json={"name": "Acme", "domains": ["acme.example"], "administrator": {"email": ADDRESS}},
        )
        assert created.status_code == 201, created.text
        key = {"Authorization": f"Bearer {created.json()['api_key']['key']}"}
        connected = await client.put(
            "/v1/mail-sync",
            headers=key,
            json=servers.connect_body(),
        )
        assert connected.status_code in (200, 201), connected.text
        for _ in range(240):
            if (await client.get("/v1/mail-sync", headers=key)).json()["status"] == "enabled":
                break
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError("the mailbox did not become enabled")
        slots = asyncio.Semaphore(8)

        async def lead(n: int) -> str:
            async with slots:
                made = await client.post(
                    "/v1/leads",
                    headers=key,
                    json={"name": f"Lead {n}", "addresses": [f"lead{n}@lead.example"]},
                )
            assert made.status_code == 201, made.text
            return str(made.json()["id"])

        lead_ids = await asyncio.gather(*(lead(n) for n in range(leads)))
    return Account(key=key["Authorization"], lead_ids=list(lead_ids))


def reference_message(n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = ADDRESS
    # not a lead: the sync keeps none of the reference's copies
    msg["To"] = f"someone{n}@elsewhere.example"
    msg["Subject"] = f"Smart Mail {n}"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@bench.example>"
    msg.set_content(BODY)
    return msg


@dataclass
class Reference:
    rate: float  # messages per second
    cpu: dict[str, float]  # ms of CPU per message: the loop (bench/send), the SMTP server, Dovecot


async def raw_loop(
    servers: MailServers, connections: int, messages: int, append: bool, marker: str
) -> Reference:
    """Messages per second of aiosmtplib's ``send_message`` over ``connections`` implicit-TLS, AUTH
    sessions; with ``append`` each message is also appended to Sent on a kept IMAP connection.  The
    CPU per message is that of the loop and the servers (the suite, idle meanwhile, is not
    counted)."""
    per_connection = messages // connections

    async def one(index: int) -> None:
        smtp = aiosmtplib.SMTP(
            hostname="localhost", port=servers.smtp_port, use_tls=True, tls_context=servers.tls()
        )
        await smtp.connect()
        await smtp.login(ADDRESS, PASSWORD)
        imap = None
        if append:
            imap = aioimaplib.IMAP4_SSL("localhost", servers.imap_port, ssl_context=servers.tls())
            await imap.wait_hello_from_server()
            await imap.login(ADDRESS, PASSWORD)
        for n in range(per_connection):
            message = reference_message(index * per_connection + n)
            await smtp.send_message(message)
            if imap is not None:
                done = await imap.append(message.as_bytes(), mailbox="Sent", flags="(\\Seen)")
                assert done.result == "OK", done
        await smtp.quit()
        if imap is not None:
            await imap.logout()

    cpu_before = cpu_by_command(PROCESSES, marker)
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    cpu_after = cpu_by_command(PROCESSES, marker)
    sent = per_connection * connections
    return Reference(
        sent / elapsed,
        {
            k: (cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0)) * 1000 / sent
            for k in REFERENCE_PROCESSES
        },
    )


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


async def scrape(client: aiohttp.ClientSession, urls: list[str], token: str) -> dict[str, float]:
    """Every sample of the processes' /metrics, summed over the processes (a name with its labels);
    the gateway's needs the operator's metrics token."""
    found: dict[str, float] = {}
    for url in urls:
        async with client.get(
            url + "/metrics", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            for line in (await response.text()).splitlines():
                match = SAMPLE.match(line)
                if match and not line.startswith("#"):
                    name = match.group(1) + (match.group(2) or "")
                    found[name] = found.get(name, 0.0) + float(match.group(3))
    return found


DATABASE_COUNTERS = {
    "transactions committed": (
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    ),
    "WAL records": "SELECT wal_records FROM pg_stat_wal",
    "WAL kB": "SELECT wal_bytes / 1024.0 FROM pg_stat_wal",
    "WAL fsyncs": "SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_io WHERE object = 'wal'",
}
ROWS_WRITTEN = (
    "SELECT schemaname, sum(n_tup_ins + n_tup_upd + n_tup_del) FROM pg_stat_user_tables GROUP BY "
    "schemaname"
)
STATS_FLUSH_SECONDS = 11.0  # idle backends report their statistics within 10 s (PostgreSQL 15+)


async def database_counters(conn: asyncpg.Connection) -> dict[str, float]:
    """The cluster's commit, WAL and row counters (each service's rows apart, by schema)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    found = {
        name: float(await conn.fetchval(query) or 0) for name, query in DATABASE_COUNTERS.items()
    }
    for schema, rows in await conn.fetch(ROWS_WRITTEN):
        found[f"rows written, {schema}"] = float(rows or 0)
    return found


def suite_python_processes(marker: str) -> dict[int, str]:
    """pid → name of the suite's uvicorn processes (those started with
    ``LEADLINE_DATA_DIR=marker``)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            if b"uvicorn" not in command or f"LEADLINE_DATA_DIR={marker}".encode() not in environ:
                continue
            package = next(c.decode() for c in command if c.startswith(b"leadline_"))
            name = package.split(".")[0].removeprefix("leadline_")
            if name == "send":
                name = "send API" if b"LEADLINE_SMTP_CONNECTIONS=0" in environ else "send delivery"
            found[int(entry.name)] = name
    return found


PROFILE_RATE = 100  # samples per second of each process, on CPU only


@contextlib.contextmanager
def profiled(directory: Path | None, marker: str, label: str) -> Iterator[dict[str, Path]]:
    """py-spy on every Python process of the suite while the block runs: name → collapsed stacks."""
    outputs: dict[str, Path] = {}
    if directory is None:
        yield outputs
        return
    directory.mkdir(parents=True, exist_ok=True)
    binary = os.environ.get("PY_SPY") or shutil.which("py-spy") or "py-spy"
    spies = []
    for pid, name in suite_python_processes(marker).items():
        outputs[name] = directory / f"{label}-{name.replace(' ', '-')}.txt"
        spies.append(
            subprocess.Popen(
                [
                    binary,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(PROFILE_RATE),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(outputs[name]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(1.0)  # py-spy attaches
    try:
        yield outputs
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)


PACKAGES = [  # (what a frame's file names, the share's name): the first match names a frame
    ("leadline_", "ours"),
    ("sqlalchemy", "SQLAlchemy"),
    ("asyncpg", "asyncpg"),
    ("pydantic", "pydantic"),
    ("fastapi", "FastAPI"),
    ("starlette", "Starlette"),
    ("uvicorn", "uvicorn"),
    ("aiohttp", "aiohttp"),
    ("nats", "nats"),
    ("prometheus_client", "prometheus"),
    ("aiosmtplib", "aiosmtplib"),
    ("aioimaplib", "aioimaplib"),
    ("ssl.py", "ssl"),
    ("email/", "email"),
    ("asyncio", "asyncio"),
    ("uvloop", "uvloop"),
    ("json", "json"),
]


def _package(frame: str) -> str:
    where = frame[frame.rfind("(") :]
    return next((name for key, name in PACKAGES if key in where), "other")


def profile_summary(path: Path, messages: int, top: int = 12) -> list[str]:
    """The CPU of one process per message: by package (the frame that ran, self time) and the
    hottest functions of ours and of the libraries (inclusive time), from py-spy's collapsed
    stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    if not path.exists():
        return [f"    (no profile: {path.name})"]
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = _package(frames[-1])
        own[leaf] = own.get(leaf, 0) + count
        for frame in set(re.sub(r":\d+\)$", ")", f) for f in frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ms(samples: int) -> float:
        return samples * 1000 / PROFILE_RATE / messages

    lines = [
        f"    on CPU {ms(total):.2f} ms per message; self time by package: "
        + ", ".join(
            f"{k} {ms(v):.2f}"
            for k, v in sorted(own.items(), key=lambda kv: -kv[1])
            if ms(v) >= 0.05
        )
    ]
    interesting = [
        (frame, n)
        for frame, n in inclusive.items()
        if n < total * 0.95
        and not any(k in frame for k in ("asyncio/", "uvloop", "<module>", "run ("))
    ]
    for frame, n in sorted(interesting, key=lambda kv: -kv[1])[:top]:
        lines.append(f"      {ms(n):6.2f} ms  {frame[:150]}")
    return lines


# (what, histogram, label filter): stages of a message's path, each the mean time per message
BREAKDOWN = [
    ("client: POST to its 202 (as the CRM sees it)", None, ""),
    ("gateway: request in, 202 out", "leadline_http_request_seconds", 'service="gateway"'),
    (
        "send API: request in, 202 out",
        "leadline_http_request_seconds",
        'service="send",route="/v1/messages"',
    ),
    ("send stages", "leadline_send_stage_seconds", ""),
    (
        "quota service: answering an ask",
        "leadline_rpc_answer_seconds",
        'subject="leadline-rpc.quota.',
    ),
    ("delivery: MAIL FROM to the reply after '.'", "leadline_send_smtp_seconds", ""),
    ("delivery: queued to accepted by the server", "leadline_send_delivery_seconds", ""),
]


def breakdown(
    before: dict[str, float], after: dict[str, float], messages: int, post_seconds: float
) -> list[tuple[str, float, float]]:
    """(what, ms per message, count per message) from the difference of two scrapes."""
    rows = [(BREAKDOWN[0][0], post_seconds * 1000 / messages, 1.0)]
    for what, histogram, labels in BREAKDOWN[1:]:
        assert histogram is not None
        sums: dict[str, list[float]] = {}
        for name, value in after.items():
            if name.startswith(histogram + "_sum") or name.startswith(histogram + "_count"):
                if labels and labels not in name:
                    continue
                label_text = name[name.find("{") :] if "{" in name else ""
                kind = "sum" if name.startswith(histogram + "_sum") else "count"
                entry = sums.setdefault(label_text, [0.0, 0.0])
                entry[0 if kind == "sum" else 1] += value - before.get(name, 0.0)
        for label_text, (total, count) in sorted(sums.items()):
            if count:
                # each matching label set its own row
                shown = f"{what} {label_text}" if label_text else what
                rows.append((shown, total * 1000 / messages, count / messages))
    return rows


@dataclass
class PathRun:
    posted: float  # seconds until the last 202
    sent: float  # until every message is sent
    copied: float  # until every Sent copy is recorded
    copies: int  # messages Dovecot's Sent folder gained
    # seconds until the sync had read every copy back onto the timeline (None: not in time)
    read_back: float | None
    rows: list[tuple[str, float, float]]
    cpu: dict[str, float]
    database: dict[str, float]  # PostgreSQL's counters per message
    profile: dict[str, list[str]]  # process → its py-spy summary (--profile)

    @property
    def rate(self) -> float:
        return 1.0 / max(self.sent, self.copied)


async def path_run(
    found: Suite,
    account: Account,
    servers: MailServers,
    database_url: str,
    messages: int,
    clients: int,
    profile: Path | None = None,
    label: str = "",
) -> PathRun:
    subject = uuid.uuid4().hex[:8]
    numbers: asyncio.Queue[int] = asyncio.Queue()
    for n in range(messages):
        numbers.put_nowait(n)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    copies_before = servers.sent_count()
    headers = {"Authorization": account.key}
    processes = [found.port(0), found.port(2), found.port(4), found.port(5)]
    latencies: list[float] = []
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=clients), timeout=aiohttp.ClientTimeout(total=120)
    ) as client:
        before = await scrape(client, processes, found.metrics_token)

        async def caller() -> None:
            while not numbers.empty():
                n = numbers.get_nowait()
                sent_at = time.perf_counter()
                async with client.post(
                    found.gateway + "/v1/messages",
                    headers=headers,
                    json={
                        "lead_ids": [account.lead_ids[n % len(account.lead_ids)]],
                        "subject": f"Smart Mail {subject} {n}",
                        "text": BODY,
                    },
                ) as response:
                    assert response.status == 202, await response.text()
                latencies.append(time.perf_counter() - sent_at)

        database_before = await database_counters(conn)
        spying = profiled(profile, found.marker, label)
        stacks = spying.__enter__()
        cpu_before = cpu_by_command(PROCESSES, found.marker)
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(clients)))
        posted = time.perf_counter() - started
        query = (
            "SELECT count(*) FILTER (WHERE state IN ('queued', 'sending', 'deferred')), "
            "count(*) FILTER (WHERE state = 'sent' AND sent_copy IS NULL) "
            "FROM send.outgoing_message WHERE subject LIKE $1"
        )
        sent = copied = 0.0
        while True:
            moving, uncopied = await conn.fetchrow(query, f"Smart Mail {subject} %")
            now = time.perf_counter() - started
            if not moving and not sent:
                sent = now
            if not moving and not uncopied:
                copied = now
                break
            await asyncio.sleep(0.02)
        read_back = await until_read_back(conn, f"Smart Mail {subject} %", messages, started)
        cpu_after = cpu_by_command(PROCESSES, found.marker)
        spying.__exit__(None, None, None)
        cpu = {k: (v - cpu_before.get(k, 0.0)) * 1000 / messages for k, v in cpu_after.items()}
        after = await scrape(client, processes, found.metrics_token)
        await asyncio.sleep(STATS_FLUSH_SECONDS)
        database_after = await database_counters(conn)
    states = dict(
        await conn.fetch(
            (
                "SELECT state, count(*) FROM send.outgoing_message WHERE subject LIKE $1 GROUP BY "
                "state"
            ),
            f"Smart Mail {subject} %",
        )
    )
    notes = dict(
        await conn.fetch(
            (
                "SELECT sent_copy, count(*) FROM send.outgoing_message WHERE subject LIKE $1 GROUP "
                "BY sent_copy"
            ),
            f"Smart Mail {subject} %",
        )
    )
    await conn.close()
    if states != {"sent": messages}:
        raise RuntimeError(f"not every message was sent: {states}")
    copies = servers.sent_count() - copies_before
    if copies != messages or list(notes) != ["saved to Sent"]:
        raise RuntimeError(f"{copies} copies in Sent for {messages} messages; copy notes {notes}")
    return PathRun(
        posted=posted / messages,
        read_back=read_back,
        sent=sent / messages,
        copied=copied / messages,
        copies=copies,
        rows=breakdown(before, after, messages, statistics.mean(latencies) * messages),
        cpu=cpu,
        database={
            k: (v - database_before.get(k, 0.0)) / messages for k, v in database_after.items()
        },
        profile={name: profile_summary(path, messages) for name, path in stacks.items()},
    )


# Every message's timeline event, with both of its sources: the Smart Mail itself and the synced
# copy
READ_BACK = """
SELECT count(*) FROM lead.timeline_event t
WHERE t.subject LIKE $1
  AND EXISTS (SELECT 1 FROM lead.timeline_event_source s WHERE s.timeline_event_id = t.id AND s.source = 'smart_mail')
  AND EXISTS (SELECT 1 FROM lead.timeline_event_source s WHERE s.timeline_event_id = t.id AND s.mailbox_id IS NOT NULL)
"""  # noqa: E501
READ_BACK_SECONDS = 120.0


async def until_read_back(
    conn: asyncpg.Connection, subjects: str, messages: int, started: float
) -> float | None:
    """Seconds from ``started`` until the sync has read every copy back from Sent and the lead
    service has joined it to the message's timeline event (R12's work after the copy is saved, which
    the CPU per message must hold: a run's clock stops at the copies, the sync's reading goes on
    after it)."""
    deadline = time.perf_counter() + READ_BACK_SECONDS
    while time.perf_counter() < deadline:
        if await conn.fetchval(READ_BACK, subjects) >= messages:
            return time.perf_counter() - started
        await asyncio.sleep(0.05)
    return None


@dataclass
class Round:
    raw_reference: Reference
    append_reference: Reference
    path: PathRun

    @property
    def raw(self) -> float:
        return self.raw_reference.rate

    @property
    def raw_append(self) -> float:
        return self.append_reference.rate


async def bench(args: argparse.Namespace) -> None:
    results: dict[int, list[Round]] = {}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="send-bench-") as tmp_name:
        tmp = Path(tmp_name)
        postgres = PostgresServer(tmp / "postgres", free_port())
        nats_server = NatsServer(tmp / "nats", free_port())
        postgres.start()
        nats_server.start()
        try:
            database_url = await create_database(postgres, "leadline")
            account: Account | None = None
            with mail_servers(tmp) as servers:
                for connections in args.connections:
                    with suite(
                        tmp,
                        database_url,
                        nats_server.url,
                        servers,
                        connections,
                        args.rate_limit,
                        args.source,
                    ) as found:
                        account = account or await set_up(found, servers, args.messages)
                        await raw_loop(
                            servers, connections, min(200, args.messages), False, found.marker
                        )  # warm up
                        await path_run(
                            found,
                            account,
                            servers,
                            database_url,
                            min(200, args.messages),
                            args.clients,
                        )
                        rounds = results[connections] = []
                        for number in range(args.rounds):
                            raw = await raw_loop(
                                servers, connections, args.messages, False, found.marker
                            )
                            raw_append = await raw_loop(
                                servers, connections, args.messages, True, found.marker
                            )
                            run = await path_run(
                                found,
                                account,
                                servers,
                                database_url,
                                args.messages,
                                args.clients,
                                args.profile,
                                f"{connections}-{number + 1}",
                            )
                            done = Round(raw, raw_append, run)
                            rounds.append(done)
                            print(
                                f"  {connections} conns, round {number + 1}: raw "
                                f"{done.raw:,.0f}/s, raw + APPEND {done.raw_append:,.0f}/s, path "
                                f"{run.rate:,.0f}/s ({run.rate / done.raw:.2f}); posted "
                                f"{1 / run.posted:,.0f}/s, sent {1 / run.sent:,.0f}/s; read back "
                                f"by the sync "
                                + (
                                    "not in time"
                                    if run.read_back is None
                                    else f"after {run.read_back:.1f} s"
                                )
                                + "; CPU ms per message: "
                                + cpu_text({k: [v] for k, v in run.cpu.items()})
                                + "; raw "
                                + cpu_text({k: [v] for k, v in raw.cpu.items()})
                                + "; raw + APPEND "
                                + cpu_text({k: [v] for k, v in raw_append.cpu.items()}),
                                flush=True,
                            )
        finally:
            nats_server.stop()
            postgres.stop()
    report(args, results, load)


def cpu_text(cpu: dict[str, list[float]]) -> str:
    medians = {kind: statistics.median(values) for kind, values in cpu.items()}
    return ", ".join(
        f"{kind} {ms:.2f}" for kind, ms in sorted(medians.items(), key=lambda kv: -kv[1])
    )


def ceiling(rounds: list[Round]) -> str:
    """What the CPU per message allows on this machine, medians of the rounds: a run cannot go
    faster than the cores divided by the CPU every process of the machine's part of it spends per
    message (the callers and the far end included, as in the references)."""
    cores = os.cpu_count() or 1
    path = statistics.median(sum(r.path.cpu.values()) for r in rounds)
    raw = statistics.median(sum(r.raw_reference.cpu.values()) for r in rounds)
    appended = statistics.median(sum(r.append_reference.cpu.values()) for r in rounds)
    best = statistics.median(r.raw for r in rounds)
    return (
        f"  CPU per message, every process counted: path {path:.1f} ms (at most "
        f"{cores * 1000 / path:,.0f}/s on {cores} cores), raw {raw:.1f} ms, raw + APPEND "
        f"{appended:.1f} ms; the path's ceiling against the raw loop's median {best:,.0f}/s: "
        f"{cores * 1000 / path / best:.2f}; 0.8 of it needs the path at "
        f"{cores * 1000 / (0.8 * best):.1f} ms per message or less"
    )


def span(values: list[float], digits: int = 2) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def report(
    args: argparse.Namespace, results: dict[int, list[Round]], load: tuple[float, float, float]
) -> None:
    print(
        f"\nSmart Mail on the user's path: 10 KB messages, {args.messages} per run, one POST "
        f"/v1/messages each through the gateway from {args.clients} callers, the synced mailbox's "
        f"SMTP (aiosmtpd, implicit TLS + AUTH), Sent copy by IMAP APPEND to Dovecot, PostgreSQL "
        f"fsync on, gateway rate limit "
        f"{'lifted' if args.rate_limit is None else f'{args.rate_limit:g}/s per key'}; "
        f"{os.cpu_count()} cores, load at start {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    print(
        f"{'conns':>5} {'raw/s':>16} {'raw + APPEND/s':>16} {'posted/s':>16} {'all sent/s':>16} "
        f"{'path (sent + copied)/s':>24} {'ratio vs raw':>18} {'vs raw + APPEND':>18}"
    )
    for connections, rounds in results.items():
        print(
            f"{connections:>5} {span([r.raw for r in rounds], 0):>16} "
            f"{span([r.raw_append for r in rounds], 0):>16} "
            f"{span([1 / r.path.posted for r in rounds], 0):>16} "
            f"{span([1 / r.path.sent for r in rounds], 0):>16} "
            f"{span([r.path.rate for r in rounds], 0):>24} "
            f"{span([r.path.rate / r.raw for r in rounds]):>18} "
            f"{span([r.path.rate / r.raw_append for r in rounds]):>18}"
        )
    for connections, rounds in results.items():
        print(
            f"\nwhere a message's time goes at {connections} connection(s), medians of "
            f"{len(rounds)} rounds "
            "(ms per message; calls per message):"
        )
        table: dict[str, list[tuple[float, float]]] = {}
        for r in rounds:
            for what, ms, count in r.path.rows:
                table.setdefault(what, []).append((ms, count))
        for what, values in table.items():
            print(
                f"  {what:<70} {statistics.median(v[0] for v in values):8.3f} ms  "
                f"x{statistics.median(v[1] for v in values):.2f}"
            )
        cpu: dict[str, list[float]] = {}
        for r in rounds:
            for kind, ms in r.path.cpu.items():
                cpu.setdefault(kind, []).append(ms)
        print("  CPU ms per message by process: " + cpu_text(cpu))
        print(ceiling(rounds))
        database: dict[str, list[float]] = {}
        for r in rounds:
            for name, value in r.path.database.items():
                database.setdefault(name, []).append(value)
        print(
            "  PostgreSQL per message: "
            + ", ".join(
                f"{name} {statistics.median(v):.2f}"
                for name, v in sorted(database.items())
                if any(v)
            )
        )
        for name, lines in rounds[-1].path.profile.items():
            print(f"  profile of {name} (py-spy, last round):")
            print("\n".join(lines))
    print(
        f"command: uv run python bench/send/run.py --messages {args.messages} --clients "
        f"{args.clients} --connections {' '.join(map(str, args.connections))} --rounds "
        f"{args.rounds}{'' if args.rate_limit is None else f' --rate-limit {args.rate_limit:g}'}"
        f"{f' --source {args.source}' if args.source else ''}"
    )
