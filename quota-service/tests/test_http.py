"""The HTTP API in-process, called as signed gateway callers."""

from __future__ import annotations

import uuid

import httpx
import pytest

from leadline_kit.identity import OPERATOR
from leadline_kit.testing.clients import as_caller, make_identity
from leadline_quota.clock import MovableClock

SECRET = "quota-test-identity-secret"
ISSUE_4_PROVIDERS = {
    "gmail",
    "office365",
    "outlook",
    "yahoo",
    "aol",
    "godaddy",
    "123reg",
    "bluehost",
    "comcast",
    "comcast_business",
    "att",
    "verizon",
    "charter",
    "roadrunner",
    "earthlink",
    "optimum",
    "1and1",
    "ipowerweb",
    "aplus",
    "lunarpages",
    "homestead",
}


@pytest.fixture
def client(quota_service: httpx.AsyncClient) -> httpx.AsyncClient:
    return quota_service


def reservation(key: str, **fields: object) -> dict[str, object]:
    return {
        "account_key": key,
        "provider": "custom",
        "recipients": 1,
        "size_bytes": 100,
        "overrides": {"messages_per_minute": 2},
        **fields,
    }


async def test_over_limit_is_a_429_with_retry_at_and_retry_after(
    client: httpx.AsyncClient, clock: MovableClock
) -> None:
    admin = as_caller(client, make_identity("administrator"), SECRET)
    key = f"smtp:{uuid.uuid4()}"
    first = await admin.post("/v1/quotas/reservations", json=reservation(key))
    assert first.status_code == 201, first.text
    commit = await admin.post(f"/v1/quotas/reservations/{first.json()['reservation_id']}/commit")
    assert commit.json() == {"ok": True, "detail": ""}
    clock.advance(seconds=20)
    assert (await admin.post("/v1/quotas/reservations", json=reservation(key))).status_code == 201
    refused = await admin.post("/v1/quotas/reservations", json=reservation(key))
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "40"
    body = refused.json()
    assert body["type"].endswith("/quota-exceeded")
    assert body["limit"] == "messages_per_minute"
    assert body["retry_at"] == "2026-03-10T12:01:00+00:00"


async def test_malformed_and_unreachable_requests_are_422(client: httpx.AsyncClient) -> None:
    admin = as_caller(client, make_identity("administrator"), SECRET)
    key = f"smtp:{uuid.uuid4()}"
    for body in (
        reservation("smtp:oops"),
        reservation(key, recipients=0),
        reservation(key, size_bytes="big"),
        reservation(key, overrides={"per_fortnight": 1}),
        {"account_key": key},
    ):
        answer = await admin.post("/v1/quotas/reservations", json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    never = await admin.post(
        "/v1/quotas/reservations", json=reservation(key, provider="optimum", recipients=51)
    )
    assert never.status_code == 422
    assert (never.json()["limit"], never.json()["retry_at"]) == ("recipients_per_message", None)
    assert "retry-after" not in never.headers


async def test_report_shows_used_remaining_and_resets_per_account(
    client: httpx.AsyncClient, clock: MovableClock
) -> None:
    identity = make_identity("administrator")
    admin = as_caller(client, identity, SECRET)
    salesperson = as_caller(
        client, make_identity("salesperson", company_id=identity.company_id), SECRET
    )
    key = f"mailbox:{uuid.uuid4()}"
    for _ in range(3):
        granted = await admin.post(
            "/v1/quotas/reservations",
            json=reservation(key, provider="yahoo", recipients=4, overrides={}, ttl_seconds=3600),
        )
        assert granted.status_code == 201
        clock.advance(minutes=5)
    report = await salesperson.get("/v1/quotas")
    assert report.status_code == 200
    body = report.json()
    assert body["plan"] == "standard" and body["mailbox_limit"] is None
    [account] = body["accounts"]
    assert account["account_key"] == key and account["provider"] == "yahoo"
    limits = {item["limit"]: item for item in account["limits"]}
    assert limits["messages_per_hour"] == {
        "limit": "messages_per_hour",
        "maximum": 100,
        "used": 3,
        "remaining": 97,
        "resets_at": "2026-03-10T13:00:00Z",
    }
    assert limits["messages_per_day"]["used"] == 3
    assert limits["recipients_per_message"] == {
        "limit": "recipients_per_message",
        "maximum": 100,
        "used": None,
        "remaining": None,
        "resets_at": None,
    }
    # another company sees nothing of it
    stranger = as_caller(client, make_identity("administrator"), SECRET)
    assert (await stranger.get("/v1/quotas")).json()["accounts"] == []


async def test_settling_another_companys_reservation_is_404(client: httpx.AsyncClient) -> None:
    admin = as_caller(client, make_identity("administrator"), SECRET)
    granted = await admin.post("/v1/quotas/reservations", json=reservation(f"smtp:{uuid.uuid4()}"))
    reservation_id = granted.json()["reservation_id"]
    stranger = as_caller(client, make_identity("administrator"), SECRET)
    assert (
        await stranger.post(f"/v1/quotas/reservations/{reservation_id}/release")
    ).status_code == 404
    assert (
        await admin.post(f"/v1/quotas/reservations/{reservation_id}/release")
    ).status_code == 200
    assert (await admin.post(f"/v1/quotas/reservations/{reservation_id}/commit")).status_code == 409


async def test_operator_overrides_plans_and_roles(client: httpx.AsyncClient) -> None:
    identity = make_identity("administrator")
    operator = as_caller(client, OPERATOR, SECRET)
    salesperson = as_caller(
        client, make_identity("salesperson", company_id=identity.company_id), SECRET
    )
    key = f"smtp:{uuid.uuid4()}"
    accounts_url = f"/v1/operator/quotas/{identity.company_id}/accounts"
    put = await operator.put(
        f"{accounts_url}/{key}",
        json={
            "overrides": {"messages_per_month": 5000, "recipients_per_message": None},
            "month_start_day": 31,
        },
    )
    assert put.status_code == 200, put.text
    limits = {item["limit"]: item["maximum"] for item in put.json()["limits"]}
    assert limits == {"message_size_bytes": 10485760, "messages_per_month": 5000}
    assert put.json()["month_start_day"] == 31
    assert (
        await operator.put(f"{accounts_url}/{key}", json={"overrides": {"nope": 1}})
    ).status_code == 422
    assert (await operator.put(f"{accounts_url}/smtp:x", json={"overrides": {}})).status_code == 422
    assert (
        await salesperson.put(f"/v1/quotas/accounts/{key}", json={"overrides": {}})
    ).status_code == 403
    assert (
        await salesperson.post("/v1/quotas/reservations", json=reservation(key))
    ).status_code == 403

    plan_url = f"/v1/operator/quotas/{identity.company_id}/plan"
    assert (await operator.put(plan_url, json={"plan": "platinum"})).status_code == 422
    plan = await operator.put(plan_url, json={"plan": "legacy_free"})
    assert plan.json()["synced_emails_per_user_per_day"] == 100
    assert (await salesperson.get("/v1/quotas")).json()["plan"] == "legacy_free"
    assert (await client.get("/v1/quotas")).status_code == 401
    # the operator acts on a company by the path, never as a tenant
    assert (await operator.get("/v1/quotas")).json()["type"].endswith("operator-not-tenant")


async def test_a_tenant_administrator_never_raises_a_limit_nor_changes_the_plan(
    client: httpx.AsyncClient,
) -> None:
    identity = make_identity("administrator")
    admin = as_caller(client, identity, SECRET)
    key = f"mailbox:{uuid.uuid4()}"
    gmail = {
        "account_key": key,
        "provider": "gmail",
        "recipients": 1,
        "size_bytes": 100,
        "overrides": {},
    }
    assert (await admin.post("/v1/quotas/reservations", json=gmail)).status_code == 201

    raised = await admin.put(
        f"/v1/quotas/accounts/{key}", json={"overrides": {"messages_per_day": 10**9}}
    )
    assert raised.status_code == 422, raised.text
    assert raised.json()["type"].endswith("quota-raise-forbidden")
    assert "messages_per_day at most 100" in raised.json()["detail"]
    lifted = await admin.put(
        f"/v1/quotas/accounts/{key}", json={"overrides": {"messages_per_day": None}}
    )
    assert lifted.status_code == 422
    for operator_field in ({"provider": "custom"}, {"month_start_day": 15}):
        assert (
            await admin.put(f"/v1/quotas/accounts/{key}", json={"overrides": {}, **operator_field})
        ).status_code == 422
    for route in (
        f"/v1/operator/quotas/{identity.company_id}/plan",
        f"/v1/operator/quotas/{identity.company_id}/accounts/{key}",
    ):
        refused = await admin.put(
            route, json={"plan": "standard", "overrides": {"messages_per_day": 10**9}}
        )
        assert refused.status_code == 403 and refused.json()["type"].endswith("operator-only"), (
            refused.text
        )
    assert (await admin.put("/v1/quotas/plan", json={"plan": "legacy_free"})).status_code in (
        404,
        405,
    )
    assert (await admin.get("/v1/quotas")).json()["plan"] == "standard"
    day = next(
        item
        for item in (await admin.get("/v1/quotas")).json()["accounts"][0]["limits"]
        if item["limit"] == "messages_per_day"
    )
    assert day["maximum"] == 100

    lowered = await admin.put(
        f"/v1/quotas/accounts/{key}", json={"overrides": {"messages_per_day": 2}}
    )
    assert lowered.status_code == 200, lowered.text
    assert lowered.json()["tenant_overrides"] == {"messages_per_day": 2}
    assert (await admin.post("/v1/quotas/reservations", json=gmail)).status_code == 201
    assert (await admin.post("/v1/quotas/reservations", json=gmail)).status_code == 429
    # the operator raising the preset leaves the tenant's lower limit in force
    operator = as_caller(client, OPERATOR, SECRET)
    assert (
        await operator.put(
            f"/v1/operator/quotas/{identity.company_id}/accounts/{key}",
            json={"overrides": {"messages_per_day": 1000}},
        )
    ).status_code == 200
    assert (await admin.post("/v1/quotas/reservations", json=gmail)).status_code == 429
    assert (
        await admin.put(f"/v1/quotas/accounts/{key}", json={"overrides": {"messages_per_day": 500}})
    ).status_code == 200
    assert (await admin.post("/v1/quotas/reservations", json=gmail)).status_code == 201


async def test_presets_list_every_provider_of_issue_4(client: httpx.AsyncClient) -> None:
    caller = as_caller(client, make_identity("jr_salesperson"), SECRET)
    body = (await caller.get("/v1/quotas/presets")).json()
    assert {p["provider"] for p in body["providers"]} == ISSUE_4_PROVIDERS
    assert body["custom"]["limits"]["recipients_per_message"] == 100
    gmail = next(p for p in body["providers"] if p["provider"] == "gmail")
    assert gmail["limits"]["messages_per_day"] == 100  # the stricter of the seeds
    assert {p["plan"] for p in body["plans"]} == {"standard", "legacy_free"}


async def test_report_pages_through_accounts(client: httpx.AsyncClient) -> None:
    admin = as_caller(client, make_identity("administrator"), SECRET)
    keys = sorted(f"smtp:{uuid.uuid4()}" for _ in range(3))
    for key in keys:
        assert (
            await admin.put(f"/v1/quotas/accounts/{key}", json={"overrides": {}})
        ).status_code == 200
    seen, cursor = [], None
    for _ in range(3):
        page = (
            await admin.get(
                "/v1/quotas", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
            )
        ).json()
        seen += [account["account_key"] for account in page["accounts"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == keys
    assert (await admin.get("/v1/quotas", params={"cursor": "garbage!"})).status_code == 400
