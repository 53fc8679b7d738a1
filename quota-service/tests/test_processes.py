"""Exactness across two quota-service processes sharing one database (uvicorn subprocesses)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
from nats.aio.client import Client

from leadline_kit.infra import free_port, wait_for_port
from leadline_proto.requests import QuotaReserveReply, QuotaReserveRequest
from leadline_proto.subjects import RPC_QUOTA_RESERVE


@pytest.fixture
def two_processes(quota_url: str, nats_url: str) -> Iterator[list[int]]:
    env = {**os.environ, "DATABASE_URL": quota_url, "NATS_URL": nats_url,
           "LEADLINE_IDENTITY_SECRET": "quota-test-identity-secret", "LEADLINE_LOG_LEVEL": "WARNING",
           "LEADLINE_CONSUMER_DURABLE": f"quota-test-{uuid.uuid4().hex[:10]}"}
    ports = [free_port(), free_port()]
    processes = [subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "leadline_quota.main:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"], env=env) for port in ports]
    try:
        for port in ports:
            wait_for_port(port, timeout=60)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def answered(metrics: str) -> int:
    pattern = r'leadline_quota_rpc_total\{outcome="(?:granted|refused)",subject="leadline-rpc.quota.reserve"\} (\S+)'
    return int(sum(float(value) for value in re.findall(pattern, metrics)))


async def test_two_processes_grant_exactly_the_limit(two_processes: list[int], nc: Client) -> None:
    async with httpx.AsyncClient() as http:
        for port in two_processes:  # both have subscribed once they are ready
            for _ in range(100):
                if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
        ask = QuotaReserveRequest(company_id=uuid.uuid4(), account_key=f"smtp:{uuid.uuid4()}", recipients=3,
                                  size_bytes=100, overrides={"recipients_per_hour": 300})

        async def reserver() -> int:
            granted = 0
            for _ in range(4):
                msg = await nc.request(RPC_QUOTA_RESERVE, ask.model_dump_json().encode(), timeout=20)
                granted += QuotaReserveReply.model_validate_json(msg.data).granted
            return granted

        assert sum(await asyncio.gather(*(reserver() for _ in range(50)))) == 100
        shares = [answered((await http.get(f"http://127.0.0.1:{port}/metrics")).text) for port in two_processes]
    assert sum(shares) == 200
    assert all(share > 0 for share in shares), f"one process answered nothing: {shares}"
