"""Smart Mail throughput: API → queue → quota → SMTP, divided by a raw aiosmtplib loop to the same
sink.

Starts its own PostgreSQL (fsync on, as in production), NATS JetStream and
Postfix's ``smtp-sink`` (the far end, so the sink is not what is measured),
applies the send and quota migrations, runs the quota service as a ``uvicorn``
process, and answers the sync service's mailbox question with "no synced
mailbox" (personal mail then goes through a company customer-service account).
Then for 1 and 8 SMTP connections:

- reference: a raw aiosmtplib loop over that many connections sending 10 KB
  messages to the sink, reported two ways: each message built as an
  ``EmailMessage`` and sent with ``send_message`` (what a sender of distinct
  messages does), and pre-serialised bytes with ``sendmail`` (the transport alone);
- the whole path: the send service as ``make run`` and the deployments run it,
  a ``uvicorn`` process serving the API and another with that many delivery
  connections (``--split 0``: one process does both); ``--clients``
  concurrent API callers POST 10 KB
  messages, one per request and then in batches (``POST /v1/messages/batch``);
  the clock runs from the first POST until every message is ``sent``.

Each ratio divides a whole-path run by the raw ``send_message`` loop run just
before it; ``--rounds`` such pairs are run, each with freshly started send
processes, and the median ratio is reported with the lowest and highest,
because this machine's speed drifts by a fifth from minute to minute and a
reference measured minutes earlier would skew the ratio.

``--against DIR`` compares two versions of the code: DIR is another checkout
(``git worktree add /tmp/before HEAD~1``), whose send service and kit the send
processes of every round run as well, the two taking turns in alternating
order.  The difference of the two ratios of each round is reported: a change
worth 3% is lost in the drift between separate runs, not between turns.

The plaintext SMTP to the sink is allowed by the operator setting; the bench
account is confirmed directly in the database (the sink throws the test
email's code away).

    uv run python bench/send/run.py [--messages 1000] [--clients 32] [--rounds 3] [--against DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import aiosmtplib
import asyncpg
import common
import httpx
import nats
import user_path
from common import BODY
from nats.aio.msg import Msg

from leadline_kit.db import asyncpg_dsn
from leadline_kit.identity import Identity, identity_headers
from leadline_kit.infra import (
    AppProcess,
    NatsServer,
    PostgresServer,
    app_processes,
    free_port,
    wait_for_port,
)
from leadline_kit.migrations import upgrade
from leadline_kit.testing.fixtures import create_database
from leadline_proto.requests import MailboxSmtpReply
from leadline_proto.subjects import RPC_MAILBOX_SMTP

COMMAND = "uv run python bench/send/run.py"
SECRET = "bench-identity-secret"


def cpu_by_command() -> dict[str, float]:
    return common.cpu_by_command(
        ("leadline_send", "leadline_quota", "postgres", "nats-server", "smtp-sink", "bench/send"),
        marker="send-bench-",
    )


@contextlib.contextmanager
def smtp_sink(port: int) -> Iterator[None]:
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    process = subprocess.Popen([binary, "-u", "nobody", f"127.0.0.1:{port}", "1024"])
    try:
        wait_for_port(port, timeout=10)
        yield
    finally:
        process.terminate()
        process.wait()


def email_message(n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "cs@company.example.com"
    msg["To"] = f"lead{n}@example.org"
    msg["Subject"] = f"Smart Mail {n}"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@bench.example>"
    msg.set_content(BODY)
    return msg


async def raw_loop(port: int, connections: int, messages: int, prebuilt: bool) -> float:
    """Messages per second of plain aiosmtplib over ``connections`` connections."""
    payload = email_message(0).as_bytes()
    per_connection = messages // connections

    async def one(index: int) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=False, start_tls=False)
        await smtp.connect()
        for n in range(per_connection):
            if prebuilt:
                await smtp.sendmail("cs@company.example.com", [f"lead{n}@example.org"], payload)
            else:
                await smtp.send_message(email_message(index * per_connection + n))
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(connections)))
    return per_connection * connections / (time.perf_counter() - started)


async def whole_path(
    send_url: str, apis: list[str], company: Identity, messages: int, clients: int, batch: int
) -> float:
    """Messages per second from the first POST until every message of this run is sent.

    Each run sends as a sender of its own, so that only its messages are counted.  ``batch`` 1: one
    ``POST /v1/messages`` per message; more: ``POST /v1/messages/batch`` with that many.  The
    callers use aiohttp, the lighter client: they share the machine's cores with the service.  With
    several replicas (``apis``) the callers are spread over them, as a load balancer would.
    """
    identity = Identity(company_id=company.company_id, user_id=uuid.uuid4(), role="salesperson")
    conn = await asyncpg.connect(asyncpg_dsn(send_url))
    requests: asyncio.Queue[list[int]] = asyncio.Queue()
    for start in range(0, messages, batch):
        requests.put_nowait(list(range(start, min(messages, start + batch))))
    headers = identity_headers(identity, SECRET)

    def one(n: int) -> dict[str, object]:
        return {"to": [f"lead{n}@example.org"], "subject": f"Smart Mail {n}", "text": BODY}

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=clients), timeout=aiohttp.ClientTimeout(total=60)
    ) as client:

        async def caller(api: str) -> None:
            while not requests.empty():
                numbers = requests.get_nowait()
                if batch == 1:
                    path, body = "/v1/messages", one(numbers[0])
                else:
                    path, body = "/v1/messages/batch", {"messages": [one(n) for n in numbers]}
                async with client.post(api + path, headers=headers, json=body) as response:
                    assert response.status == 202, await response.text()

        cpu_before = cpu_by_command()
        started = time.perf_counter()
        await asyncio.gather(*(caller(apis[n % len(apis)]) for n in range(clients)))
        posted = time.perf_counter() - started
        sent_by_then = await conn.fetchval(
            "SELECT count(*) FROM send.outgoing_message WHERE state = 'sent' AND user_id = $1",
            identity.user_id,
        )
        # polled on the small index of messages still in motion: counting the whole table every few
        # milliseconds would take PostgreSQL's CPU from the service being measured
        while await conn.fetchval(
            "SELECT count(*) FROM send.outgoing_message WHERE state IN ('queued', "
            "'sending', 'deferred') AND user_id = $1",
            identity.user_id,
        ):
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        sent = await conn.fetchval(
            "SELECT count(*) FROM send.outgoing_message WHERE state = 'sent' AND user_id = $1",
            identity.user_id,
        )
        if sent != messages:
            raise RuntimeError(f"{messages - sent} messages were not sent; see the service log")
    await conn.close()
    cpu = {k: (v - cpu_before.get(k, 0.0)) * 1000 / messages for k, v in cpu_by_command().items()}
    print(
        f"    batch {batch}: posted {messages} in {posted:.2f}s ({messages / posted:,.0f}/s, "
        f"{sent_by_then} sent by then), all sent after {elapsed:.2f}s; CPU ms per message: "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
    )
    return messages / elapsed


async def settle_down(url: str) -> None:
    """Let PostgreSQL write out what the last run left in its buffers before the reference runs, so
    the raw loop does not share the cores with the checkpointer."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    await asyncio.sleep(1)


async def no_synced_mailbox(msg: Msg) -> None:
    await msg.respond(MailboxSmtpReply(found=False).model_dump_json().encode())


def send_processes(
    env: dict[str, str], args: argparse.Namespace, connections: int, source: Path | None
) -> tuple[list[AppProcess], list[AppProcess]]:
    """(delivering only, serving the API) send-service processes for one run; ``source``: a source
    tree (a checkout of the repository) whose send service and kit replace the installed ones."""
    if source is not None:
        env = {**env, "PYTHONPATH": f"{source / 'send-service' / 'src'}:{source / 'kit' / 'src'}"}
    senders = []
    if args.split:
        # the API process has no delivery workers and relays their outbox; others (no HTTP traffic)
        # deliver, the connections split between them
        each = {
            **env,
            "LEADLINE_SMTP_CONNECTIONS": str(max(1, connections // args.split)),
            "LEADLINE_OUTBOX_RELAY": "false",
        }
        senders = [
            AppProcess("leadline_send", free_port(), each)
            for _ in range(min(args.split, connections))
        ]
        env = {**env, "LEADLINE_SMTP_CONNECTIONS": "0"}
    # replicas: each serves the API and delivers over its share of the connections
    served = [
        AppProcess(
            "leadline_send",
            free_port(),
            {
                **env,
                "LEADLINE_SMTP_CONNECTIONS": env["LEADLINE_SMTP_CONNECTIONS"]
                if args.split
                else str(connections // args.replicas + (r < connections % args.replicas)),
            },
        )
        for r in range(args.replicas)
    ]
    return senders, served


async def sink_account(api: str, send_url: str, sink_port: int) -> Identity:
    """A company whose customer-service account is the sink, confirmed directly in the database."""
    identity = Identity(company_id=uuid.uuid4(), user_id=uuid.uuid4(), role="administrator")
    async with httpx.AsyncClient(base_url=api) as client:
        created = await client.post(
            "/v1/smtp-accounts",
            headers=identity_headers(identity, SECRET),
            json={
                "name": "sink",
                "type": "customer_service",
                "host": "127.0.0.1",
                "port": sink_port,
                "tls": "plain",
                "from_email": "cs@company.example.com",
                "active": True,
            },
        )
    assert created.status_code == 201, created.text
    conn = await asyncpg.connect(asyncpg_dsn(send_url))
    await conn.execute(
        "UPDATE send.smtp_account SET confirmed_at = now() WHERE id = $1",
        uuid.UUID(created.json()["id"]),
    )
    await conn.close()
    return identity


Pairs = list[tuple[float, float]]  # (raw send_message loop, whole path) messages/s, one per round


async def bench(args: argparse.Namespace) -> None:
    sources: list[Path | None] = [None, *([args.against] if args.against else [])]
    # source, conns, batch, bytes/s, pairs
    rows: list[tuple[Path | None, int, int, float, Pairs]] = []
    with tempfile.TemporaryDirectory(prefix="send-bench-") as tmp:
        postgres = PostgresServer(Path(tmp) / "postgres", free_port(), fast_unsafe=not args.fsync)
        nats_server = NatsServer(Path(tmp) / "nats", free_port())
        postgres.start()
        nats_server.start()
        sink_port = free_port()
        try:
            send_url = await create_database(postgres, "send_bench")
            quota_url = await create_database(postgres, "quota_bench")
            await upgrade("leadline_send", send_url)
            await upgrade("leadline_quota", quota_url)
            responder = await nats.connect(nats_server.url)
            await responder.subscribe(RPC_MAILBOX_SMTP, cb=no_synced_mailbox)
            common = {
                "NATS_URL": nats_server.url,
                "LEADLINE_IDENTITY_SECRET": SECRET,
                "LEADLINE_LOG_LEVEL": "WARNING",
            }
            quota = AppProcess("leadline_quota", free_port(), {**common, "DATABASE_URL": quota_url})
            with smtp_sink(sink_port), app_processes(quota):
                for connections in args.connections:
                    # warm up
                    await raw_loop(sink_port, connections, min(200, args.messages), prebuilt=True)
                    bytes_only = await raw_loop(
                        sink_port, connections, args.messages, prebuilt=True
                    )
                    env = {
                        **common,
                        "DATABASE_URL": send_url,
                        "LEADLINE_SMTP_CONNECTIONS": str(connections),
                        "LEADLINE_SMTP_ALLOW_PLAINTEXT": "true",
                        "LEADLINE_MAIL_ALLOW_NETWORKS": "127.0.0.0/8",
                        "LEADLINE_CONSUMER_PREFIX": f"send-bench-{connections}",
                    }
                    runs: dict[tuple[Path | None, int], Pairs] = {
                        (source, batch): [] for source in sources for batch in args.batches
                    }
                    # Fresh processes every round, and with --against the two trees take turns (in
                    # alternating order), so that both see the same drift of this machine's speed.
                    for round_number in range(args.rounds):
                        for source in sources if round_number % 2 == 0 else sources[::-1]:
                            senders, served = send_processes(env, args, connections, source)
                            with app_processes(*senders, *served):
                                apis = [f"http://127.0.0.1:{process.port}" for process in served]
                                identity = await sink_account(apis[0], send_url, sink_port)
                                await whole_path(
                                    send_url,
                                    apis,
                                    identity,
                                    min(200, args.messages),
                                    args.clients,
                                    1,
                                )  # warm up
                                for batch in args.batches:
                                    await settle_down(send_url)
                                    built = await raw_loop(
                                        sink_port, connections, args.messages, prebuilt=False
                                    )
                                    runs[(source, batch)].append(
                                        (
                                            built,
                                            await whole_path(
                                                send_url,
                                                apis,
                                                identity,
                                                args.messages,
                                                args.clients,
                                                batch,
                                            ),
                                        )
                                    )
                    rows.extend(
                        (source, connections, batch, bytes_only, runs[(source, batch)])
                        for source in sources
                        for batch in args.batches
                    )
            await responder.close()
        finally:
            nats_server.stop()
            postgres.stop()
    report(args, rows)


def report(
    args: argparse.Namespace, rows: list[tuple[Path | None, int, int, float, Pairs]]
) -> None:
    print(
        f"\nSmart Mail, 10 KB messages, {args.messages} per run, {args.clients} API callers, "
        f"Postfix smtp-sink, PostgreSQL fsync {'on' if args.fsync else 'OFF'}, "
        f"{f'API in one send process, delivery in {args.split}' if args.split else ''}"
        f"{'' if args.split else f'{args.replicas} send process(es) serving the API and delivering'}, "  # noqa: E501
        f"{os.cpu_count()} cores"
    )
    print(
        f"{'code':>8} {'conns':>5} {'per POST':>8} {'raw send_message/s':>19} "
        f"{'raw sendmail bytes/s':>21} {'whole path/s':>13} "
        f"{'ratio vs send_message (low-high)':>33} {'ratio vs bytes':>15}"
    )
    ratios: dict[tuple[Path | None, int, int], list[float]] = {}
    for source, connections, batch, bytes_only, pairs in rows:
        found = ratios[(source, connections, batch)] = [rate / built for built, rate in pairs]
        rate = statistics.median(rate for _, rate in pairs)
        span = f"{statistics.median(found):.2f} ({min(found):.2f}-{max(found):.2f})"
        print(
            f"{'against' if source else 'this':>8} {connections:>5} {batch:>8} "
            f"{statistics.median(b for b, _ in pairs):>19,.0f} {bytes_only:>21,.0f} "
            f"{rate:>13,.0f} {span:>33} {rate / bytes_only:>15.2f}"
        )
    if args.against:
        print(
            f"\nthis tree minus {args.against}, ratio of the same round (positive: this tree is "
            f"faster):"
        )
        for (source, connections, batch), found in ratios.items():
            if source is None:
                differences = [
                    a - b
                    for a, b in zip(found, ratios[(args.against, connections, batch)], strict=True)
                ]
                print(
                    f"  {connections} conns, {batch} per POST: mean "
                    f"{statistics.mean(differences):+.3f}, median "
                    f"{statistics.median(differences):+.3f}, {sum(d > 0 for d in differences)} of "
                    f"{len(differences)} rounds ahead"
                )
    print(
        f"command: {COMMAND} --path api --messages {args.messages} --clients {args.clients} "
        f"--connections {' '.join(map(str, args.connections))} --batches "
        f"{' '.join(map(str, args.batches))} --rounds {args.rounds}"
        f"{f' --split {args.split}' if args.split != 1 else ''}"
        f"{f' --replicas {args.replicas}' if args.replicas > 1 else ''}"
        f"{f' --against {args.against}' if args.against else ''}"
        f"{'' if args.fsync else ' --no-fsync'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--path",
        choices=("user", "api"),
        default="user",
        help="user: the CRM's path through the gateway, TLS + AUTH, the Sent copy (user_path.py); "
        "api: straight to the send service, a company account in plaintext, smtp-sink",
    )
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument(
        "--clients", type=int, default=None, help="concurrent API callers (user: 8, api: 32)"
    )
    parser.add_argument(
        "--source",
        type=Path,
        metavar="DIR",
        help="user path: run the suite from another checkout (e.g. a git worktree of main before "
        "a change), for before and after figures",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        metavar="PER_SECOND",
        help="user path: the gateway's per-key rate limit (burst 4 s of it); default: lifted",
    )
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[1, 50],
        help="messages per API request: 1 = POST /v1/messages, more = POST /v1/messages/batch",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="pairs of (raw loop, whole path) runs; the median ratio is reported",
    )
    parser.add_argument(
        "--split",
        type=int,
        default=1,
        metavar="N",
        help="run the API in one send-service process and the delivery workers in N others "
        "(1: as make run and the deployments do; 0: one process serves the API and delivers)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="N send processes, each serving the API and delivering over its share of the "
        "connections (the callers spread over them, as behind a load balancer)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="a checkout of the repository (e.g. a git worktree of another commit): every round "
        "also runs the whole path with its send service and kit, and the paired difference "
        "is reported",
    )
    parser.add_argument(
        "--no-fsync",
        dest="fsync",
        action="store_false",
        help="PostgreSQL without fsync, to see the cost of durable commits",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        type=Path,
        help="user path: sample every Python process of the suite with py-spy (PY_SPY or on PATH) "
        "during each path run, writing collapsed stacks to DIR and printing the hottest frames per "
        "process",
    )
    args = parser.parse_args()
    if args.path == "user":
        args.clients = args.clients or 8
        asyncio.run(user_path.bench(args))
    else:
        args.clients = args.clients or 32
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
