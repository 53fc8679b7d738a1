"""Memory of a sync service that has started and done nothing yet (issue 20).

    uv run python bench/sync/start_memory.py [--samples 1]

Starts PostgreSQL and NATS of its own (in a temporary directory), applies the sync service's
migrations, and the sync service as ``deploy/run.py`` starts it (``uvicorn --factory
leadline_sync.main:create_app``, uvloop, httptools).  Once ``/readyz`` answers 200, prints every 2 s
(``--samples`` times) the service's RSS, peak RSS (``VmHWM``) and PSS, and those of its children
(parser processes: none before a batch).  Cheap (seconds of CPU): no bench lock needed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import asyncpg

from leadline_kit.db import asyncpg_dsn
from leadline_kit.infra import NatsServer, PostgresServer, free_port
from leadline_kit.migrations import upgrade


def memory_mib(pid: int) -> tuple[int, int, int]:
    """RSS, peak RSS and PSS of ``pid``, MiB."""
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    pss = sum(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    return (
        int(fields["VmRSS"].split()[0]) // 1024,
        int(fields["VmHWM"].split()[0]) // 1024,
        pss // 1024,
    )


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    return []


async def create_database(admin_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await conn.execute('CREATE DATABASE "leadline"')
    finally:
        await conn.close()


def wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    while True:
        if process.poll() is not None:
            sys.exit(f"the sync service exited with {process.returncode}; see {log}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.3)


def measure(work: Path, samples: int) -> None:
    postgres = PostgresServer(work / "postgres", free_port())
    nats = NatsServer(work / "nats", free_port())
    postgres.start()
    process: subprocess.Popen[bytes] | None = None
    try:
        nats.start()
        asyncio.run(create_database(postgres.admin_url))
        env = {
            **os.environ,
            "DATABASE_URL": postgres.url("leadline"),
            "NATS_URL": nats.url,
            "LEADLINE_ENVIRONMENT": "development",
            "LEADLINE_IDENTITY_SECRET": secrets.token_urlsafe(32),
            "LEADLINE_SYNC_CREDENTIAL_KEYS": "k1:"
            + base64.b64encode(secrets.token_bytes(32)).decode(),
            "LEADLINE_LOG_LEVEL": "WARNING",
        }
        asyncio.run(upgrade("leadline_sync", env["DATABASE_URL"]))
        port, log = free_port(), work / "sync.log"
        started = time.monotonic()
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "--factory", "leadline_sync.main:create_app"),
                *(
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--loop",
                    "uvloop",
                    "--http",
                    "httptools",
                ),
                "--no-access-log",
            ],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_ready(process, port, log)
        print(f"ready after {time.monotonic() - started:.1f} s; load {os.getloadavg()[0]:.1f}")
        for _ in range(samples):
            time.sleep(2)
            rss, peak, pss = memory_mib(process.pid)
            kids = {child: memory_mib(child) for child in children(process.pid)}
            print(
                f"sync service: RSS {rss} MiB, peak {peak} MiB, PSS {pss} MiB; children (RSS, "
                f"peak, PSS) {kids}"
            )
    finally:
        if process is not None:
            process.terminate()
            process.wait(20)
        nats.stop()
        postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="leadline-start-memory-") as work:
        measure(Path(work), args.samples)


if __name__ == "__main__":
    main()
