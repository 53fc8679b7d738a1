"""Quota reservations through NATS: granted per second with 1 and 2 quota-service processes, p99
latency.

Starts its own PostgreSQL (fsync on, as in production) and NATS JetStream with
``leadline_kit.infra``, applies the quota migrations, then for 1 and 2
``uvicorn`` processes of the quota service:

- throughput: ``--clients`` concurrent requesters reserving for ``--duration``
  seconds over ``--accounts`` sending accounts (each with a day limit far
  above what the run can use, so every grant evaluates its windows), and the
  same over a single hot account (every reservation serialised on one row lock);
- latency: one requester, ``--samples`` reservations one after the other: p50 / p99.

Reference measured in the same run: a bare NATS responder that answers at once
(same clients, same duration), so the ratio shows what the quota decision costs
over the bus alone.

    uv run python bench/quota/run.py [--duration 8] [--clients 64] [--accounts 50] [--samples 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from leadline_kit.infra import AppProcess, NatsServer, PostgresServer, app_processes, free_port
from leadline_kit.migrations import upgrade
from leadline_kit.testing.fixtures import create_database
from leadline_proto.requests import QuotaReserveReply, QuotaReserveRequest
from leadline_proto.subjects import RPC_QUOTA_RESERVE

COMMAND = "uv run python bench/quota/run.py"


@contextmanager
def quota_processes(count: int, database_url: str, nats_url: str) -> Iterator[list[int]]:
    env = {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "LEADLINE_LOG_LEVEL": "WARNING",
        "LEADLINE_IDENTITY_SECRET": "bench-identity-secret",
        "LEADLINE_CONSUMER_PREFIX": "quota-bench",
    }
    apps = [AppProcess("leadline_quota", free_port(), env) for _ in range(count)]
    with app_processes(*apps):
        yield [app.port for app in apps]


def ask_for(account: str, company: uuid.UUID) -> bytes:
    return (
        QuotaReserveRequest(
            company_id=company,
            account_key=account,
            provider="gmail",
            recipients=1,
            size_bytes=20_000,
            overrides={"messages_per_day": 10_000_000},
        )
        .model_dump_json()
        .encode()
    )


async def load(
    nc: Client, subject: str, asks: list[bytes], clients: int, duration: float
) -> tuple[float, int]:
    """(granted per second, refused or failed) with ``clients`` requesters for ``duration``
    seconds."""
    granted = failed = 0
    stop_at = time.perf_counter() + duration

    async def requester(index: int) -> None:
        nonlocal granted, failed
        i = index
        while time.perf_counter() < stop_at:
            try:
                msg = await nc.request(subject, asks[i % len(asks)], timeout=10)
                if (
                    subject != RPC_QUOTA_RESERVE
                    or QuotaReserveReply.model_validate_json(msg.data).granted
                ):
                    granted += 1
                else:
                    failed += 1
            except Exception:
                failed += 1
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(requester(i) for i in range(clients)))
    return granted / (time.perf_counter() - started), failed


async def latency(nc: Client, asks: list[bytes], samples: int) -> tuple[float, float]:
    timings = []
    for i in range(samples):
        started = time.perf_counter()
        msg = await nc.request(RPC_QUOTA_RESERVE, asks[i % len(asks)], timeout=10)
        timings.append(time.perf_counter() - started)
        assert QuotaReserveReply.model_validate_json(msg.data).granted
    quantiles = statistics.quantiles(timings, n=100)
    return quantiles[49] * 1000, quantiles[98] * 1000


async def bare_responder_rate(nc: Client, clients: int, duration: float) -> float:
    subject = f"bench.echo.{uuid.uuid4().hex}"

    async def echo(msg: Msg) -> None:
        await msg.respond(b'{"granted":true}')

    responder = await nats.connect(nc.connected_url.geturl() if nc.connected_url else "")
    await responder.subscribe(subject, queue="bench", cb=echo)
    await responder.flush()
    try:
        rate, _ = await load(nc, subject, [b"{}"], clients, duration)
    finally:
        await responder.close()
    return rate


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="quota-bench-") as tmp:
        postgres = PostgresServer(Path(tmp) / "postgres", free_port())
        nats_server = NatsServer(Path(tmp) / "nats", free_port())
        postgres.start()
        nats_server.start()
        try:
            url = await create_database(postgres, "quota_bench")
            await upgrade("leadline_quota", url)
            nc = await nats.connect(nats_server.url)
            reference = await bare_responder_rate(nc, args.clients, args.duration)
            rows = []
            for processes in (1, 2):
                company = uuid.uuid4()
                spread = [ask_for(f"smtp:{uuid.uuid4()}", company) for _ in range(args.accounts)]
                hot = [ask_for(f"smtp:{uuid.uuid4()}", company)]
                with quota_processes(processes, url, nats_server.url):
                    await load(nc, RPC_QUOTA_RESERVE, spread, args.clients, 1.0)  # warm up pools
                    spread_rate, spread_failed = await load(
                        nc, RPC_QUOTA_RESERVE, spread, args.clients, args.duration
                    )
                    hot_rate, hot_failed = await load(
                        nc, RPC_QUOTA_RESERVE, hot, args.clients, args.duration
                    )
                    p50, p99 = await latency(nc, spread, args.samples)
                rows.append((processes, spread_rate, spread_failed, hot_rate, hot_failed, p50, p99))
            await nc.close()
        finally:
            nats_server.stop()
            postgres.stop()

    print(
        f"quota reservations through NATS ({args.clients} clients, {args.duration:.0f}s each, "
        f"{args.accounts} accounts; PostgreSQL fsync on; {os.cpu_count()} cores)"
    )
    print(f"reference: bare NATS responder {reference:,.0f} replies/s")
    print(
        f"{'processes':>9} {'granted/s':>10} {'vs bare':>8} {'1 hot acct/s':>13} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'failed':>7}"
    )
    for processes, spread_rate, spread_failed, hot_rate, hot_failed, p50, p99 in rows:
        print(
            f"{processes:>9} {spread_rate:>10,.0f} {spread_rate / reference:>8.3f} "
            f"{hot_rate:>13,.0f} {p50:>7.2f} {p99:>7.2f} {spread_failed + hot_failed:>7}"
        )
    print(f"2 processes / 1 process: {rows[1][1] / rows[0][1]:.2f}x")
    print(
        f"command: {COMMAND} --duration {args.duration:g} --clients {args.clients} "
        f"--accounts {args.accounts} --samples {args.samples}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--samples", type=int, default=1000)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
