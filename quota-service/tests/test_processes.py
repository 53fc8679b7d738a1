"""Exactness across two quota-service processes sharing one database (uvicorn subprocesses)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from nats.aio.client import Client

from leadline_kit.infra import AppProcess, app_processes, free_port
from leadline_proto.requests import QuotaReserveReply, QuotaReserveRequest
from leadline_proto.subjects import RPC_QUOTA_RESERVE


@pytest.fixture
def two_processes(quota_url: str, nats_url: str) -> Iterator[list[int]]:
    env = {
        "DATABASE_URL": quota_url,
        "NATS_URL": nats_url,
        "LEADLINE_IDENTITY_SECRET": "quota-test-identity-secret",
        "LEADLINE_LOG_LEVEL": "WARNING",
        "LEADLINE_CONSUMER_PREFIX": f"quota-test-{uuid.uuid4().hex[:10]}",
    }
    apps = [AppProcess("leadline_quota", free_port(), env) for _ in range(2)]
    with app_processes(*apps):  # ready: both have subscribed
        yield [app.port for app in apps]


def answered(metrics: str) -> int:
    pattern = r'leadline_rpc_answers_total\{outcome="(?:granted|refused)",subject="leadline-rpc.quota.reserve"\} (\S+)'
    return int(sum(float(value) for value in re.findall(pattern, metrics)))


async def test_two_processes_grant_exactly_the_limit(two_processes: list[int], nc: Client) -> None:
    async with httpx.AsyncClient() as http:
        ask = QuotaReserveRequest(
            company_id=uuid.uuid4(),
            account_key=f"smtp:{uuid.uuid4()}",
            recipients=3,
            size_bytes=100,
            overrides={"recipients_per_hour": 300},
        )

        async def reserver() -> int:
            granted = 0
            for _ in range(4):
                msg = await nc.request(
                    RPC_QUOTA_RESERVE, ask.model_dump_json().encode(), timeout=20
                )
                granted += QuotaReserveReply.model_validate_json(msg.data).granted
            return granted

        assert sum(await asyncio.gather(*(reserver() for _ in range(50)))) == 100
        shares = [
            answered((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
            for port in two_processes
        ]
    assert sum(shares) == 200
    assert all(share > 0 for share in shares), f"one process answered nothing: {shares}"
