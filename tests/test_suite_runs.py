"""`make run`'s code brings up the five services and the gateway, all ready, on real parts."""

from __future__ import annotations

import uuid

from tests.conftest import Suite


def test_all_five_services_ready_behind_the_gateway(suite: Suite) -> None:
    with suite.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        for service in ("lead", "quota", "sync", "send"):
            assert checks[f"{service}-service"] == "ok"
        assert checks["database"] == "ok" and checks["nats"] == "ok"


def test_company_bootstrap_then_every_service_answers_through_the_gateway(suite: Suite) -> None:
    with suite.client() as client:
        created = client.post(
            "/v1/companies",
            headers={"Authorization": f"Bearer {suite.bootstrap_token}"},
            json={
                "name": "Acme",
                "domains": ["acme.example"],
                "administrator": {"email": f"boss@{uuid.uuid4().hex[:6]}.example"},
            },
        )
        assert created.status_code == 201, created.text
        key = {"Authorization": f"Bearer {created.json()['api_key']['key']}"}
        for path in (
            "/v1/leads",
            "/v1/blocklist",
            "/v1/quotas",
            "/v1/mail-sync/providers",
            "/v1/mailboxes",
            "/v1/smtp-accounts",
            "/v1/messages",
        ):
            response = client.get(path, headers=key)
            assert response.status_code == 200, (
                f"{path}: {response.status_code} {response.text[:300]}"
            )
        document = client.get("/openapi.json").json()
        for path in ("/v1/leads", "/v1/quotas", "/v1/mail-sync", "/v1/messages", "/v1/companies"):
            assert path in document["paths"], f"{path} missing from the merged OpenAPI document"
