"""Requests/s through the gateway divided by requests/s straight to the service.

    uv run python bench/gateway/run.py [--seconds 5] [--concurrency 32] [--rounds 3]

Starts PostgreSQL and NATS (leadline_kit.infra), the lead service and the
gateway as uvicorn processes (uvloop + httptools, one worker each, as `make
run` does), creates a company, then alternates rounds of a small authenticated
GET (`/v1/leads?limit=1`): through the gateway with the API key, and straight
to the lead service with a signed identity header.  The load generator is one
aiohttp client in this process with a fixed number of concurrent requests.
Prints each round and the ratio of the medians; the target is at least 0.6.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from leadline_kit.identity import Identity, identity_headers
from leadline_kit.infra import AppProcess, NatsServer, PostgresServer, app_processes, free_port
from leadline_kit.migrations import upgrade
from leadline_kit.testing.fixtures import create_database

SECRET = "bench-identity-secret"
BOOTSTRAP = "bench-bootstrap"


async def load(url: str, headers: dict[str, str], seconds: float, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        done = 0
        failures = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, failures
            while time.perf_counter() < deadline:
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        done += 1
                    else:
                        failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{failures} requests failed during the run")
    return done / elapsed


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    postgres = PostgresServer(base / "pg", free_port(), fast_unsafe=True)
    nats_server = NatsServer(base / "nats", free_port())
    postgres.start()
    nats_server.start()
    try:
        url = await create_database(postgres, "bench")
        for package in ("leadline_gateway", "leadline_lead"):
            await upgrade(package, url)
        lead_port, gateway_port = free_port(), free_port()
        env = {
            "DATABASE_URL": url,
            "NATS_URL": nats_server.url,
            "LEADLINE_IDENTITY_SECRET": SECRET,
            "LEADLINE_BOOTSTRAP_TOKEN": BOOTSTRAP,
            "LEADLINE_LEAD_URL": f"http://127.0.0.1:{lead_port}",
            "LEADLINE_RATE_LIMIT_PER_SECOND": "1000000",
            "LEADLINE_RATE_LIMIT_BURST": "1000000",
            "LEADLINE_LOG_LEVEL": "WARNING",
        }
        with app_processes(
            AppProcess("leadline_lead", lead_port, env, base / "leadline_lead.log"),
            AppProcess(
                "leadline_gateway",
                gateway_port,
                env,
                base / "leadline_gateway.log",
                ready_path="/healthz",
            ),
        ):  # its readyz also asks services not run here
            await measure(args, lead_port, gateway_port)
    finally:
        nats_server.stop()
        postgres.stop()


async def measure(args: argparse.Namespace, lead_port: int, gateway_port: int) -> None:
    gateway = f"http://127.0.0.1:{gateway_port}"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gateway + "/v1/companies",
            headers={"Authorization": f"Bearer {BOOTSTRAP}"},
            json={"name": "Bench", "administrator": {"email": "a@bench.example"}},
        ) as r:
            created = await r.json()
            assert r.status == 201, created
        key_headers = {"Authorization": f"Bearer {created['api_key']['key']}"}
        async with session.post(
            gateway + "/v1/leads",
            headers=key_headers,
            json={"name": "Lee", "addresses": ["lee@lead.example"]},
        ) as r:
            assert r.status == 201, await r.text()
    identity = Identity(
        company_id=uuid.UUID(created["company"]["id"]),
        user_id=uuid.UUID(created["administrator"]["id"]),
        role="administrator",
    )
    path = "/v1/leads?limit=1"
    # warm both paths (connection pools, caches)
    await load(gateway + path, key_headers, 1.0, args.concurrency)
    await load(
        f"http://127.0.0.1:{lead_port}{path}",
        identity_headers(identity, SECRET),
        1.0,
        args.concurrency,
    )
    through, direct = [], []
    for round_ in range(args.rounds):
        direct.append(
            await load(
                f"http://127.0.0.1:{lead_port}{path}",
                identity_headers(identity, SECRET),
                args.seconds,
                args.concurrency,
            )
        )
        through.append(await load(gateway + path, key_headers, args.seconds, args.concurrency))
        print(
            f"round {round_ + 1}: direct {direct[-1]:8.0f} req/s   through gateway "
            f"{through[-1]:8.0f} req/s"
            f"   ratio {through[-1] / direct[-1]:.2f}"
        )
    ratio = statistics.median(through) / statistics.median(direct)
    print(
        f"median: direct {statistics.median(direct):.0f} req/s, gateway "
        f"{statistics.median(through):.0f} req/s; gateway/direct = {ratio:.2f} (target >= 0.6), "
        f"concurrency {args.concurrency}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
