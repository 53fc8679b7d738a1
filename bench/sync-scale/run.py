"""Sync at scale: N mailboxes held live (IDLE) on one Dovecot, connected through the gateway.

    uv run python bench/sync-scale/run.py [--mailboxes 5000] [--samples 100] [--share 3 [--share-mailboxes 3000]]
        [--skip latency restart bring-online]

Starts its own PostgreSQL, NATS JetStream, an SMTP server (aiosmtpd, STARTTLS
and AUTH, for the SMTP login that connecting checks) and a Dovecot configured
for thousands of connections (``DovecotServer(connections=N)``: login
processes with ``service_count = 0`` that hold many connections each, imap
processes of 200 clients each, higher process, client and vsz limits), and
raises the kernel's ``fs.inotify.max_user_instances``: past it (128 by
default) Dovecot's IDLE falls back to checking every 30 s, which would be
measured as our latency.  Then the whole suite as ``make run`` runs it
(``deploy/run.py``, one sync replica), and:

1. N users, each a company's administrator with one lead, connect their own
   mailbox (``PUT /v1/mail-sync``, ``--clients`` at a time); reported: the time
   until every mailbox is live (the replicas' ``leadline_sync_live_sessions``
   add up to N), the IMAP connections Dovecot holds, and the RSS of the sync
   process trees (parse workers included) per mailbox, against the same
   processes before any mailbox was connected.
2. New-mail latency while all are connected: ``--samples`` messages appended
   to the INBOX (from the lead) or Sent (to the lead) of random mailboxes;
   the time from APPEND's OK until the ``mail.synced`` event, and until the
   lead's timeline shows it (through the gateway); p50 / p95 / max per folder.
3. Dovecot restarted: the time until all N are live again (the reconnect storm).
4. The sync replica restarted (SIGTERM, then a new process): the time until
   it holds all N live again (the bring-online storm, paced by the replica's
   login gate, without the API calls of step 1).
5. ``--share R``: the replica replaced by R replicas (``--share-mailboxes M``
   of the mailboxes left connected, the others disconnected through the API),
   each capped so that R - 1 of them can hold all M, with a lease of
   ``--lease-seconds`` (default 10 here); the time until all M are live and
   how they are spread; then one replica SIGKILLed, a message appended at once
   to up to 20 of its mailboxes, the time until all M are live on the others,
   and each of those messages counted: ``mail.synced`` events and timeline
   entries (exactly one each).

The reference of each ratio is measured in the same run: RSS against the
processes before connecting; latency against the target of 10 s.  Note the
load (``uptime``) printed beside the figures: this machine is shared.
"""  # noqa: E501

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import nats
import psutil
import trustme

from leadline_kit.db import asyncpg_dsn
from leadline_kit.infra import AppProcess, DovecotServer, NatsServer, PostgresServer, free_port
from leadline_kit.testing.fixtures import create_database
from leadline_mail.imap import ImapSettings, connect_imap
from leadline_mail.net import parse_allowlist

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.mail_servers import SmtpServer  # noqa: E402 - the suite's real SMTP server, as the tests use it

COMMAND = "uv run python bench/sync-scale/run.py"
LIVE_METRIC = "leadline_sync_live_sessions"


def raise_inotify_instances(wanted: int) -> str:
    path = Path("/proc/sys/fs/inotify/max_user_instances")
    current = int(path.read_text())
    if current < wanted:
        try:
            path.write_text(str(wanted))
        except OSError as exc:
            return (
                f"{current} (could not raise it to {wanted}: {exc}; IDLE may fall back to a 30 s "
                f"poll)"
            )
    return path.read_text().strip()


def established(port: int) -> int:
    """TCP connections in ESTABLISHED state whose local port is ``port`` (the server's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def tree_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            total += sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
    return total


def exited(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def sync_pids(suite: subprocess.Popen[bytes], extra: list[AppProcess]) -> list[int]:
    children = psutil.Process(suite.pid).children(recursive=True)
    pids = [c.pid for c in children if "leadline_sync.main" in " ".join(c.cmdline())]
    return pids + [a.process.pid for a in extra if a.process is not None]


async def live_sessions(session: aiohttp.ClientSession, ports: list[int]) -> int:
    total = 0.0
    for port in ports:
        try:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
        except aiohttp.ClientError:
            continue
        total += sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(LIVE_METRIC + "{")
        )
    return int(total)


async def start_stages(session: aiohttp.ClientSession, ports: list[int]) -> dict[str, float]:
    """The replicas' ``leadline_sync_session_start_seconds_total`` by stage, and their session
    starts ("count")."""
    stages: dict[str, float] = {}
    for port in ports:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith("leadline_sync_session_start_seconds_total{"):
                stage = line.split('stage="', 1)[1].split('"', 1)[0]
                stages[stage] = stages.get(stage, 0.0) + float(line.rsplit(" ", 1)[1])
            elif line.startswith("leadline_sync_session_starts_total "):
                stages["count"] = stages.get("count", 0.0) + float(line.rsplit(" ", 1)[1])
    return stages


async def wait_until(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        await asyncio.sleep(0.25)
    return time.monotonic() - started


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    key: str,
    body: Any = None,
    expect: tuple[int, ...] = (200, 201),
    patience: float = 300.0,
) -> Any:
    """One API call.  429 waits as Retry-After says; a 502/503/504 or a dropped connection (a
    service too slow to answer on this loaded machine) is tried again, for up to ``patience``
    seconds in all."""
    deadline = time.monotonic() + patience
    while True:
        try:
            async with session.request(
                method, url, json=body, headers={"Authorization": f"Bearer {key}"}
            ) as response:
                text = await response.text()
                if response.status not in (429, 502, 503, 504):
                    if response.status not in expect:
                        raise RuntimeError(f"{method} {url}: {response.status} {text[:300]}")
                    return json.loads(text) if text else None
                pause, problem = (
                    float(response.headers.get("Retry-After", "1")),
                    f"{response.status} {text[:200]}",
                )
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            pause, problem = 1.0, repr(exc)
        if time.monotonic() + pause > deadline:
            raise RuntimeError(f"{method} {url}: still failing after {patience:.0f} s: {problem}")
        await asyncio.sleep(pause)


async def bounded(tasks: list[Callable[[], Awaitable[Any]]], concurrency: int) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(task: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await task()

    return await asyncio.gather(*(one(t) for t in tasks))


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return (
        f"p50 {statistics.median(ordered):.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s "
        f"(n={len(ordered)})"
    )


def message(sender: str, to: str, subject: str, message_id: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "About the proposal we discussed.\r\n"
    ).encode()


class Monitor:
    """While a phase runs: how long the sync replicas take to answer ``/metrics`` (their event
    loop's lag, asked every half second) and the CPU each part of the suite used, to tell a slow
    code path from a busy machine."""

    def __init__(self, processes: dict[str, list[psutil.Process]], ports: list[int]) -> None:
        self.processes = processes
        self.ports = ports
        self.answers: list[float] = []
        self.cpu: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None

    @staticmethod
    def _cpu(roots: list[psutil.Process]) -> float:
        total = 0.0
        for root in roots:
            try:
                for process in [root, *root.children(recursive=True)]:
                    times = process.cpu_times()
                    total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total

    async def __aenter__(self) -> Monitor:
        self.started = time.monotonic()
        self.load = os.getloadavg()[0]
        self.cpu = {name: self._cpu(roots) for name, roots in self.processes.items()}
        self.task = asyncio.create_task(self._ask())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.seconds = time.monotonic() - self.started
        self.cpu = {
            name: self._cpu(roots) - self.cpu[name] for name, roots in self.processes.items()
        }

    async def _ask(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            while True:
                for port in self.ports:
                    asked = time.monotonic()
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                            await response.read()
                    self.answers.append(time.monotonic() - asked)
                await asyncio.sleep(0.5)

    def report(self) -> str:
        cpu = ", ".join(
            f"{name} {seconds / self.seconds:.0%}" for name, seconds in self.cpu.items()
        )
        return (
            f"monitor  {self.seconds:.0f} s, load {self.load:.1f} -> {os.getloadavg()[0]:.1f}; "
            f"sync /metrics answered in {percentiles(self.answers)}; CPU of one core: {cpu}"
        )


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="leadline-bench-sync-scale-"))
        self.ca = trustme.CA()
        self.cafile = self.work / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.cafile))
        self.users: list[dict[str, Any]] = []
        self.synced: dict[str, float] = {}  # Message-ID -> when its mail.synced event arrived
        self.published: Counter[str] = Counter()  # Message-ID -> mail.synced events seen
        self.smtp_port = 0
        self.progress = ""  # the takeover's, each second (takeover_trace)
        self.database_url = ""
        self.suite: subprocess.Popen[bytes] | None = None
        self.dovecot: DovecotServer | None = None
        self.extra: list[AppProcess] = []
        self.env: dict[str, str] = {}
        # the mailboxes that became live (the later phases wait for as many)
        self.target = args.mailboxes

    def imap(self, user: dict[str, Any], dovecot: DovecotServer) -> ImapSettings:
        return ImapSettings(
            host="127.0.0.1",
            port=dovecot.tls_port,
            tls="implicit",
            username=user["address"],
            password=user["password"],
            cafile=str(self.cafile),
            allow_networks=parse_allowlist("127.0.0.0/8"),
        )

    async def run(self) -> None:
        args = self.args
        n = args.mailboxes
        print(f"{COMMAND} {' '.join(sys.argv[1:])}  (uptime: {os.getloadavg()})", flush=True)
        print(f"fs.inotify.max_user_instances = {raise_inotify_instances(max(1024, n + 512))}")
        postgres = PostgresServer(self.work / "postgres", free_port())
        nats_server = NatsServer(self.work / "nats", free_port())
        cert = self.ca.issue_cert("localhost", "127.0.0.1")
        dovecot = DovecotServer(
            self.work / "dovecot",
            cert.cert_chain_pems[0].bytes() + self.ca.cert_pem.bytes(),
            cert.private_key_pem.bytes(),
            connections=n + 100,
        )
        # delivers to Dovecot users: the address proof of PUT /v1/mail-sync
        smtp = SmtpServer(self.ca, dovecot)
        self.dovecot = dovecot
        extra = self.extra
        suite: subprocess.Popen[bytes] | None = None
        try:
            postgres.start()
            nats_server.start()
            dovecot.start()
            smtp.start()
            self.smtp_port = smtp.port
            database_url = self.database_url = await create_database(postgres, "leadline")
            for i in range(n):
                user = {
                    "address": f"user{i}@acme{i}.example",
                    "password": secrets.token_urlsafe(9),
                    "lead": f"lead{i}@customer{i}.example",
                }
                dovecot.add_user(user["address"], user["password"])
                smtp.add_user(user["address"], user["password"])
                self.users.append(user)
            suite, env, base = self.start_suite(database_url, nats_server.url)
            self.suite, self.env = suite, env
            await self.measure(
                suite,
                base + 3,
                dovecot,
                nats_server.url,
                f"http://127.0.0.1:{base}",
                env["LEADLINE_BOOTSTRAP_TOKEN"],
            )
        finally:
            for replica in extra:
                replica.stop()
            if suite is not None:
                suite.send_signal(signal.SIGINT)
                try:
                    suite.wait(60)
                except subprocess.TimeoutExpired:
                    suite.kill()
            smtp.stop()
            dovecot.stop()
            nats_server.stop()
            postgres.stop()

    def start_suite(
        self, database_url: str, nats_url: str
    ) -> tuple[subprocess.Popen[bytes], dict[str, str], int]:
        """``deploy/run.py`` as ``make run`` starts it, on a free block of ports, with this run's
        servers."""
        data = self.work / "suite"
        data.mkdir()
        keys = {
            "LEADLINE_IDENTITY_SECRET": secrets.token_urlsafe(32),
            "LEADLINE_BOOTSTRAP_TOKEN": secrets.token_urlsafe(24),
            "LEADLINE_SYNC_CREDENTIAL_KEYS": "k1:" + base64.b64encode(os.urandom(32)).decode(),
            "LEADLINE_CREDENTIAL_KEYS": "k1:" + secrets.token_hex(32),
            "LEADLINE_UNSUBSCRIBE_SECRET": secrets.token_urlsafe(32),
        }
        (data / "secrets.env").write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        (data / "secrets.env").chmod(0o600)
        base = free_port()
        while any(not _port_free(base + i) for i in range(6)):
            base = free_port()
        env = {
            **os.environ,
            **keys,
            "DATABASE_URL": database_url,
            "NATS_URL": nats_url,
            "LEADLINE_DATA_DIR": str(data),
            "LEADLINE_PORT_BASE": str(base),
            "LEADLINE_ENVIRONMENT": "development",
            # operator settings: the mail servers live on loopback and use this run's CA
            "LEADLINE_SYNC_ALLOW_NETWORKS": "127.0.0.0/8",
            "LEADLINE_SYNC_CA_FILE": str(self.cafile),
            "LEADLINE_MAIL_ALLOW_NETWORKS": "127.0.0.0/8",
            "LEADLINE_MAIL_CAFILE": str(self.cafile),
            # this machine is shared: starting the suite may take longer than a quiet machine's 120
            # s
            "LEADLINE_READY_SECONDS": "600",
            # the bench stops the suite's sync replica and starts its own on the same port
            "LEADLINE_RUN_REPLACEABLE": "sync",
        }
        log = (self.work / "run.log").open("wb")
        suite = subprocess.Popen(
            [sys.executable, str(ROOT / "deploy" / "run.py")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and suite.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{base}/readyz", timeout=3).status_code == 200:
                    # the secrets deploy/run.py added to the file (the metrics token, ...): replicas
                    # started by this bench get the same
                    written = (data / "secrets.env").read_text().splitlines()
                    return (
                        suite,
                        {**env, **dict(line.split("=", 1) for line in written if "=" in line)},
                        base,
                    )
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"the suite did not become ready; see {self.work}/run.log and {data}/logs"
        )

    async def measure(
        self,
        suite: subprocess.Popen[bytes],
        sync_port: int,
        dovecot: DovecotServer,
        nats_url: str,
        gateway: str,
        bootstrap: str,
    ) -> None:
        args, n = self.args, self.args.mailboxes
        sync_ports = [sync_port]
        nc = await nats.connect(nats_url)

        async def on_synced(msg: Any) -> None:
            payload = json.loads(msg.data)["payload"]
            self.synced.setdefault(payload["message_id"], time.monotonic())
            self.published[payload["message_id"]] += 1

        await nc.subscribe("leadline.mail.synced.v1", cb=on_synced)
        connector = aiohttp.TCPConnector(limit=args.clients * 2)
        async with aiohttp.ClientSession(
            base_url=gateway, connector=connector, timeout=aiohttp.ClientTimeout(total=300)
        ) as http:
            started = time.monotonic()

            async def company(user: dict[str, Any]) -> None:
                created = await call(
                    http,
                    "POST",
                    "/v1/companies",
                    key=bootstrap,
                    body={
                        "name": user["address"],
                        "domains": [user["address"].split("@")[1]],
                        "administrator": {"email": user["address"]},
                    },
                )
                user["key"] = created["api_key"]["key"]
                lead = await call(
                    http,
                    "POST",
                    "/v1/leads",
                    key=user["key"],
                    body={"name": "Lead", "addresses": [user["lead"]]},
                )
                user["lead_id"] = lead["id"]

            await bounded([lambda u=u: company(u) for u in self.users], args.clients)
            print(f"{n} companies, users and leads created in {time.monotonic() - started:.0f} s")
            await asyncio.sleep(3)  # the sync service learns of the leads through their events
            pids = sync_pids(suite, self.extra)
            before = tree_rss(pids)

            answered: list[float] = []

            refused: Counter[str] = Counter()

            async def connect(user: dict[str, Any]) -> None:
                asked = time.monotonic()
                body = {
                    "provider": "custom",
                    "address": user["address"],
                    "password": user["password"],
                    "imap": {"host": "127.0.0.1", "port": dovecot.port, "use_ssl": False},
                    "smtp": {"host": "127.0.0.1", "port": self.smtp_port, "use_ssl": False},
                }
                for attempt in range(3):
                    try:
                        await call(http, "PUT", "/v1/mail-sync", key=user["key"], body=body)
                        break
                    except RuntimeError as exc:
                        # on this loaded machine a check may time out (the proof mail late, a slow
                        # login): the user would try again; counted and printed
                        if " 422 " not in str(exc) or attempt == 2:
                            raise
                        refused[str(exc).split(" 422 ", 1)[1][:120]] += 1
                answered.append(time.monotonic() - asked)

            load = os.getloadavg()[0]
            started = time.monotonic()
            await bounded([lambda u=u: connect(u) for u in self.users], args.clients)
            connected = time.monotonic() - started
            metrics = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
            async with metrics:
                # all N, or as many as became live with no progress for 3 minutes (then said, and
                # the later phases wait for that many)
                best, best_at = 0, time.monotonic()
                while (
                    count := await live_sessions(metrics, sync_ports)
                ) < n and time.monotonic() - best_at < 180:
                    if count > best:
                        best, best_at = count, time.monotonic()
                    await asyncio.sleep(1)
                self.target = count
                live = time.monotonic() - started
                if count < n:
                    print(f"NOT ALL LIVE: {count} of {n} live, no progress for 3 minutes")
                await asyncio.sleep(5)  # let the historical syncs settle before reading memory
                after = tree_rss(sync_pids(suite, self.extra))
                held = established(dovecot.port)
                print(
                    f"connect:  all {n} PUT /v1/mail-sync answered after {connected:.0f} s "
                    f"({args.clients} at a time; each {percentiles(answered)}); all live after "
                    f"{live:.0f} s (load {load:.1f})"
                )
                print(
                    f"memory:   sync process tree(s) {before / 2**20:.0f} MiB before, "
                    f"{after / 2**20:.0f} MiB with {n} live: {(after - before) / n / 1024:.0f} KiB "
                    f"per mailbox (target < 200)"
                )
                print(
                    f"IMAP connections held by Dovecot: {held}; PUTs refused once and tried again: "
                    f"{dict(refused)}"
                )
                await self.steps(http, metrics, suite, dovecot, sync_port)
        await nc.close()

    async def steps(
        self,
        http: aiohttp.ClientSession,
        metrics: aiohttp.ClientSession,
        suite: subprocess.Popen[bytes],
        dovecot: DovecotServer,
        sync_port: int,
    ) -> None:
        """Steps 2 to 5, with all mailboxes connected (``--skip`` leaves some out)."""
        skip = set(self.args.skip)
        if "latency" not in skip:
            await self.latency(http, dovecot, [sync_port])
        if "restart" not in skip:
            await self.restart(dovecot, metrics, [sync_port])
        if "bring-online" not in skip:
            await self.bring_online(suite, metrics, sync_port)
        if self.args.share >= 2:
            await self.share(http, metrics, dovecot, sync_port)

    def processes(self) -> dict[str, list[psutil.Process]]:
        """The parts of the run whose CPU the monitor reports."""
        assert self.suite is not None
        found: dict[str, list[psutil.Process]] = {}
        for child in psutil.Process(self.suite.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                line = " ".join(child.cmdline())
                name = next(
                    (s for s in ("sync", "lead", "gateway") if f"leadline_{s}.main" in line),
                    "other services",
                )
                found.setdefault(name, []).append(child)
        if self.dovecot is not None and self.dovecot.process is not None:
            found["dovecot"] = [psutil.Process(self.dovecot.process.pid)]
        postmaster = self.work / "postgres" / "pgdata" / "postmaster.pid"
        found["postgres"] = [psutil.Process(int(postmaster.read_text().split()[0]))]
        found["sync"] = found.get("sync", []) + [
            psutil.Process(r.process.pid) for r in self.extra if r.process
        ]
        found["bench"] = [psutil.Process()]
        return found

    async def latency(
        self, http: aiohttp.ClientSession, dovecot: DovecotServer, sync_ports: list[int]
    ) -> None:
        rng = random.Random(18)
        results: dict[str, tuple[list[float], list[float]]] = {"INBOX": ([], []), "Sent": ([], [])}
        # Message-ID -> (folder, when APPEND's OK came, wall clock)
        wall: dict[str, tuple[str, float]] = {}
        load = os.getloadavg()[0]

        async def sample(i: int) -> None:
            user = rng.choice(self.users)
            folder = "INBOX" if i % 2 == 0 else "Sent"
            message_id = f"<sample-{i}-{uuid.uuid4().hex}@bench.example>"
            subject = f"sample {i} {uuid.uuid4().hex[:6]}"
            raw = (
                message(user["lead"], user["address"], subject, message_id)
                if folder == "INBOX"
                else message(user["address"], user["lead"], subject, message_id)
            )
            client = await connect_imap(self.imap(user, dovecot))
            try:
                await client.append(folder, raw)
            finally:
                await client.logout()
            appended = time.monotonic()
            wall[message_id] = (folder, time.time())
            while message_id not in self.synced and time.monotonic() - appended < 120:
                await asyncio.sleep(0.05)
            event = self.synced.get(message_id, math.inf) - appended
            # the timeline is asked once the event is out (asking all along would load the gateway
            # and the lead service, on these 2 cores, more than the sync service being measured)
            while time.monotonic() - appended < 120:
                timeline = await call(
                    http, "GET", f"/v1/leads/{user['lead_id']}/timeline", key=user["key"]
                )
                items = timeline["items"] if isinstance(timeline, dict) else timeline
                if any(item.get("subject") == subject for item in items):
                    break
                await asyncio.sleep(0.25)
            results[folder][0].append(event)
            results[folder][1].append(time.monotonic() - appended)

        async def spaced(i: int) -> None:
            await asyncio.sleep(i * 0.25)
            await sample(i)

        async with Monitor(self.processes(), sync_ports) as monitor:
            await asyncio.gather(*(spaced(i) for i in range(self.args.samples)))
        print(monitor.report())
        for folder, (events, timelines) in results.items():
            print(
                f"latency {folder:5}  mail.synced: {percentiles(events)}; on the timeline: "
                f"{percentiles(timelines)} (load {load:.1f})"
            )
        await self.trace(wall)

    async def trace(self, wall: dict[str, tuple[str, float]]) -> None:
        """Where the time goes: APPEND's OK -> the sync service's row (``synced_at``, the storing
        transaction's start, PostgreSQL's clock = this machine's) -> the ``mail.synced`` event."""
        conn = await asyncpg.connect(asyncpg_dsn(self.database_url))
        try:
            rows = await conn.fetch(
                "SELECT message_id, extract(epoch FROM synced_at) AS at FROM sync.synced_message "
                "WHERE message_id = ANY($1::text[])",
                list(wall),
            )
        finally:
            await conn.close()
        stored = {row["message_id"]: float(row["at"]) for row in rows}
        for folder in ("INBOX", "Sent"):
            ids = [m for m, (f, _) in wall.items() if f == folder]
            print(
                f"trace   {folder:5}  APPEND -> stored by the sync service: "
                f"{percentiles([stored.get(m, math.inf) - wall[m][1] for m in ids])}"
            )

    async def restart(
        self, dovecot: DovecotServer, metrics: aiohttp.ClientSession, ports: list[int]
    ) -> None:
        n = self.target
        dovecot.stop()
        dovecot.start()

        async def dropped() -> bool:
            return await live_sessions(metrics, ports) < n

        async def back() -> bool:
            return await live_sessions(metrics, ports) >= n

        noticed = await wait_until("sessions dropped by the restart", dropped, 120)
        again = await wait_until("all live again", back, 1800)
        # Dovecot's old imap processes (200 clients each) end their connections up to 30 s after the
        # restart
        print(
            f"restart:  Dovecot restarted; sessions dropped after {noticed:.0f} s, all {n} live "
            f"again {again:.0f} s later, {established(dovecot.port)} connections held"
        )

    async def stop_suite_replica(self, suite: subprocess.Popen[bytes]) -> float:
        """SIGTERM to the sync replica ``deploy/run.py`` started (it gives back its leases); the
        seconds it took."""
        old = next(
            c
            for c in psutil.Process(suite.pid).children()
            if "leadline_sync.main" in " ".join(c.cmdline())
        )
        stopping = time.monotonic()
        old.terminate()
        # not our child: deploy/run.py reaps it within a second (LEADLINE_RUN_REPLACEABLE), until
        # then it is a zombie (which psutil's wait() would wait out to its timeout: the "> 60 s" of
        # an earlier run)
        while not exited(old):
            if time.monotonic() - stopping > 600:
                raise TimeoutError("the sync replica did not stop within 600 s of SIGTERM")
            await asyncio.sleep(0.05)
        return time.monotonic() - stopping

    async def bring_online(
        self, suite: subprocess.Popen[bytes], metrics: aiohttp.ClientSession, port: int
    ) -> None:
        """The sync replica restarted (SIGTERM: it gives back its leases; a new process on the same
        port): the time until it holds all N live again, from its start and from its ``/readyz``."""
        n = self.target
        stopped = await self.stop_suite_replica(suite)
        replica = AppProcess("leadline_sync", port, self.env, log=self.work / "sync-restarted.log")
        started = time.monotonic()
        replica.start()
        self.extra.append(replica)
        await asyncio.to_thread(replica.wait_ready, 600)
        ready = time.monotonic() - started

        async def all_live() -> bool:
            return await live_sessions(metrics, [port]) >= n

        async with Monitor(self.processes(), [port]) as monitor:
            live = await wait_until("all live on the restarted replica", all_live, 1800) + ready
        print(
            f"bring-online: the replica stopped (SIGTERM) in {stopped:.1f} s; a new one ready "
            f"{ready:.0f} s after its start, all {n} live {live:.0f} s "
            f"after its start ({live - ready:.0f} s after ready)"
        )
        print(monitor.report())

    async def share(
        self,
        http: aiohttp.ClientSession,
        metrics: aiohttp.ClientSession,
        dovecot: DovecotServer,
        port: int,
    ) -> None:
        args = self.args
        r, m = args.share, min(args.share_mailboxes or args.mailboxes, self.target)
        users = self.users[:m]
        if m < len(self.users):
            started = time.monotonic()
            await bounded(
                [
                    lambda u=u: call(http, "DELETE", "/v1/mail-sync", key=u["key"], expect=(204,))
                    for u in self.users[m:]
                ],
                args.clients,
            )
            print(
                f"share:    {len(self.users) - m} mailboxes disconnected (DELETE) in "
                f"{time.monotonic() - started:.0f} s"
            )
        if not self.extra:
            # (--skip bring-online) the suite's own replica still runs on the gateway's port
            assert self.suite is not None
            stopped = await self.stop_suite_replica(self.suite)
            print(
                f"share:    the suite's sync replica, holding {m} live, stopped (SIGTERM) in "
                f"{stopped:.1f} s"
            )
        for replica in self.extra:
            assert replica.process is not None
            replica.process.terminate()  # SIGTERM: its leases are given back
            await asyncio.to_thread(replica.process.wait, 600)
        self.extra.clear()
        lease = args.lease_seconds or 10.0
        env = {
            **self.env,
            # each capped so that the others share the mailboxes and the survivors of a kill can
            # hold them all
            "LEADLINE_SYNC_MAX_MAILBOXES": str(math.ceil(m / (r - 1)) + 1),
            "LEADLINE_SYNC_ROTATION_SLOTS": "1",
            "LEADLINE_SYNC_LEASE_SECONDS": str(lease),
        }
        # the first on the port the gateway calls
        ports = [port] + [free_port() for _ in range(r - 1)]
        replicas = [
            AppProcess(
                "leadline_sync",
                p,
                {**env, "LEADLINE_SYNC_REPLICA": f"replica-{i}"},
                log=self.work / f"sync-replica-{i}.log",
            )
            for i, p in enumerate(ports)
        ]
        started = time.monotonic()
        for replica in replicas:
            replica.start()
            self.extra.append(replica)
        for replica in replicas:
            await asyncio.to_thread(replica.wait_ready, 600)
        ready = time.monotonic() - started

        def all_live(among: list[int]) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return await live_sessions(metrics, among) >= m

            return check

        live = await wait_until(f"all {m} live on {r} replicas", all_live(ports), 600) + ready
        spread = [await live_sessions(metrics, [p]) for p in ports]
        print(
            f"share:    {r} replicas (lease {lease:g} s) ready {ready:.0f} s after their start; "
            f"all {m} live after {live:.0f} s, held {spread}"
        )
        # the replica holding the most (the last to start may hold none: the others' caps fit them
        # all)
        most = max(range(r), key=lambda i: spread[i])
        victim = replicas[most]
        assert victim.process is not None
        orphans = await self.held_by(victim, users)
        survivors = [p for i, p in enumerate(ports) if i != most]
        starts_before = await start_stages(metrics, survivors)
        processes = {
            **{name: found for name, found in self.processes().items() if name != "sync"},
            **{
                f"replica-{i}": [psutil.Process(replica.process.pid)]
                for i, replica in enumerate(replicas)
                if i != most and replica.process is not None
            },
        }
        # (CPU only: the trace asks the survivors' /metrics every second)
        monitor = Monitor(processes, [])
        await monitor.__aenter__()
        started = time.monotonic()
        victim.process.kill()
        victim.process.wait()
        takeover = asyncio.create_task(
            self.takeover_trace(
                metrics,
                survivors,
                [replicas[i].env["LEADLINE_SYNC_REPLICA"] for i in range(r)],
                most,
            )
        )
        sample = random.Random(18).sample(orphans, min(20, len(orphans)))
        marks = {u["address"]: f"<takeover-{uuid.uuid4().hex}@bench.example>" for u in sample}

        async def append(user: dict[str, Any]) -> None:
            client = await connect_imap(self.imap(user, dovecot))
            try:
                raw = message(
                    user["lead"], user["address"], "during the takeover", marks[user["address"]]
                )
                await client.append("INBOX", raw)
            finally:
                await client.logout()

        await asyncio.gather(*(append(u) for u in sample))
        await wait_until("the killed replica's mailboxes live elsewhere", all_live(survivors), 600)
        took = time.monotonic() - started  # from the kill
        await monitor.__aexit__(None, None, None)
        takeover.cancel()
        await asyncio.gather(takeover, return_exceptions=True)
        unsynced = await self.unsynced()

        async def arrived() -> bool:
            return all(mark in self.synced for mark in marks.values())

        await wait_until("the messages appended during the takeover synced", arrived, 300)
        await asyncio.sleep(5)  # a duplicate would be out by now
        shown = []
        for user in sample:
            timeline = await call(
                http, "GET", f"/v1/leads/{user['lead_id']}/timeline", key=user["key"]
            )
            items = timeline["items"] if isinstance(timeline, dict) else timeline
            shown.append(sum(item.get("subject") == "during the takeover" for item in items))
        events = [self.published[mark] for mark in marks.values()]
        print(
            f"kill:     SIGKILL of a replica holding {len(orphans)}; all {m} live on the other "
            f"{r - 1} after {took:.0f} s (lease {lease:g} s); enabled mailboxes not held live "
            f"after that: {unsynced}; {len(sample)} messages appended meanwhile: mail.synced "
            f"events per message {Counter(events)}, timeline entries per message {Counter(shown)}"
        )
        print(f"takeover: {self.progress}")
        print(f"takeover: {monitor.report()}")
        starts = {
            stage: seconds - starts_before.get(stage, 0.0)
            for stage, seconds in (await start_stages(metrics, survivors)).items()
        }
        count = starts.pop("count", 0.0)
        print(
            (
                f"takeover: {count:.0f} sessions started on the survivors; mean seconds per stage "
                f"from the claim to live: "
            )
            + ", ".join(
                f"{stage} {seconds / max(count, 1):.2f}" for stage, seconds in starts.items()
            )
        )

    async def takeover_trace(
        self, metrics: aiohttp.ClientSession, survivors: list[int], names: list[str], victim: int
    ) -> None:
        """Every second from the kill: the survivors' claims (their leases) and live sessions, as
        ``self.progress``; the first claim of a killed replica's mailbox marks the lease's
        expiry."""
        started = time.monotonic()
        held = [n for i, n in enumerate(names) if i != victim]
        conn = await asyncpg.connect(asyncpg_dsn(self.database_url))
        try:
            while True:
                leased = await conn.fetchval(
                    "SELECT count(*) FROM sync.mailbox WHERE lease_owner = ANY($1::text[])", held
                )
                live = await live_sessions(metrics, survivors)
                self.progress += f" {time.monotonic() - started:.0f}s {leased}/{live}"
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started) % 1.0))
        finally:
            await conn.close()
            self.progress = (
                "leased/live on the survivors each second after the kill:" + self.progress
            )

    async def unsynced(self) -> int:
        """Enabled mailboxes no replica holds live under a running lease."""
        conn = await asyncpg.connect(asyncpg_dsn(self.database_url))
        try:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM sync.mailbox WHERE status = 'enabled' AND NOT (sync_mode = "
                "'live' AND lease_owner IS NOT NULL AND lease_expires_at > now())"
            )
        finally:
            await conn.close()
        return count

    async def held_by(
        self, replica: AppProcess, users: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The users whose mailboxes ``replica`` syncs (its leases)."""
        conn = await asyncpg.connect(asyncpg_dsn(self.database_url))
        try:
            rows = await conn.fetch(
                "SELECT address FROM sync.mailbox WHERE lease_owner = $1",
                replica.env["LEADLINE_SYNC_REPLICA"],
            )
        finally:
            await conn.close()
        held = {row["address"] for row in rows}
        return [u for u in users if u["address"] in held]


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mailboxes", type=int, default=5000)
    parser.add_argument(
        "--samples", type=int, default=100, help="new-mail latency samples (half INBOX, half Sent)"
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent API callers")
    parser.add_argument(
        "--lease-seconds",
        type=float,
        help="the shared replicas' lease (LEADLINE_SYNC_LEASE_SECONDS); default 10",
    )
    parser.add_argument(
        "--share", type=int, default=0, help="then R replicas share the mailboxes; one is killed"
    )
    parser.add_argument(
        "--share-mailboxes", type=int, help="of the mailboxes, this many stay connected to share"
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["latency", "restart", "bring-online"],
        help="leave out these steps (a run within a time budget; --share on its own)",
    )
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    asyncio.run(Bench(parser.parse_args()).run())


if __name__ == "__main__":
    main()
