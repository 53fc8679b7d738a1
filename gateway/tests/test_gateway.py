"""Gateway on real PostgreSQL and NATS, routing to a real service built on the kit."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import trustme
import uvicorn
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from pydantic import SecretStr

from leadline_gateway.config import Settings
from leadline_gateway.main import create_app
from leadline_kit.db import service_metadata
from leadline_kit.identity import IDENTITY_HEADER, Caller, Operator
from leadline_kit.infra import free_port
from leadline_kit.outbox import outbox_table
from leadline_kit.pagination import encode_cursor
from leadline_kit.service import create_service_app
from leadline_kit.settings import KitSettings
from leadline_kit.testing.clients import running_app
from leadline_kit.testing.fixtures import create_database, migrated_database
from tests.mail_servers import SmtpServer

SECRET = "gateway-test-identity-secret"
BOOTSTRAP = "gateway-test-bootstrap"

whoami = APIRouter()


@whoami.get("/v1/leads/whoami")
async def who(caller: Caller) -> dict[str, Any]:
    return {
        "company_id": str(caller.company_id),
        "user_id": str(caller.user_id),
        "role": caller.role,
    }


@whoami.post("/v1/leads/echo")
async def echo(body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    return {"body": body, "company_id": str(caller.company_id)}


@whoami.get("/v1/mail-sync/oauth/callback", response_model=None)
async def sign_in_callback(request: Request) -> dict[str, Any] | RedirectResponse:
    if (
        request.query_params.get("state") == "hand-off"
    ):  # the sync service sends the browser on to the CRM
        return RedirectResponse("https://crm.example/done?sign_in=h", status_code=303)
    return {"query": str(request.url.query), "identity": IDENTITY_HEADER in request.headers}


@whoami.get("/v1/operator/quotas/{company_id}/whoami")
async def who_operates(company_id: uuid.UUID, operator: Operator) -> dict[str, Any]:
    return {"company_id": str(company_id), "role": operator.role}


@pytest.fixture
async def upstream(postgres, nats_url: str) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    """A real service (kit runtime, signed identity check) listening on a loopback port."""
    url = await create_database(postgres, f"t_{uuid.uuid4().hex[:12]}")
    settings = KitSettings(database_url=url, nats_url=nats_url, identity_secret=SECRET)
    app = create_service_app(
        name="whoami",
        settings=settings,
        schema="public",
        outbox=outbox_table(service_metadata("public")),
        routers=[whoami],
        use_nats=False,
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture(scope="session")
def mail_sink(
    tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SmtpServer, str]]:
    """The operator's SMTP server for the system mailer: a real aiosmtpd, STARTTLS and AUTH required."""
    server = SmtpServer(tls_ca)
    server.add_user("leadline-mailer", "mailer-password")
    ca_file = tmp_path_factory.mktemp("mailer") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    server.start()
    yield server, str(ca_file)
    server.stop()


def gateway_settings(
    url: str, nats_url: str, upstream: str, mail_sink: tuple[SmtpServer, str], **overrides: Any
) -> Settings:
    dead = f"http://127.0.0.1:{free_port()}"
    server, ca_file = mail_sink
    values: dict[str, Any] = dict(
        database_url=url,
        nats_url=nats_url,
        identity_secret=SECRET,
        bootstrap_token=BOOTSTRAP,
        lead_url=upstream,
        quota_url=dead,
        sync_url=dead,
        send_url=dead,
        rate_limit_per_second=5,
        rate_limit_burst=20,
        mailer_host="localhost",
        mailer_port=server.port,
        mailer_tls="starttls",
        mailer_username="leadline-mailer",
        mailer_password="mailer-password",
        mailer_ca_file=ca_file,
        mailer_from="Leadline <no-reply@leadline.example>",
    )
    return Settings(**{**values, **overrides})


@pytest.fixture
async def gateway(  # type: ignore[no-untyped-def]
    postgres,
    nats_url: str,
    upstream: str,
    mail_sink: tuple[SmtpServer, str],
) -> AsyncIterator[httpx.AsyncClient]:
    url = await migrated_database(postgres, "leadline_gateway")
    async with running_app(
        create_app(gateway_settings(url, nats_url, upstream, mail_sink))
    ) as client:
        yield client


async def new_company(client: httpx.AsyncClient, name: str = "Acme") -> dict[str, Any]:
    response = await client.post(
        "/v1/companies",
        headers={"Authorization": f"Bearer {BOOTSTRAP}"},
        json={
            "name": name,
            "domains": ["acme.example"],
            "administrator": {"email": f"admin@{uuid.uuid4().hex[:6]}.example"},
        },
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def bearer(created: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {created['api_key']['key']}"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"].startswith("https://leadline.dev/problems/")
    return body


async def test_bootstrap_needs_the_token(gateway: httpx.AsyncClient) -> None:
    body = {"name": "X", "administrator": {"email": "a@x.example"}}
    assert_problem(await gateway.post("/v1/companies", json=body), 401)
    assert_problem(
        await gateway.post("/v1/companies", json=body, headers={"Authorization": "Bearer nope"}),
        401,
    )
    # the token is checked before the body: without it nobody learns what a valid body looks like
    for bad in ({"name": ""}, {"administrator": 3}):
        refused = assert_problem(await gateway.post("/v1/companies", json=bad), 401)
        assert "errors" not in refused
        assert_problem(
            await gateway.post("/v1/companies", json=bad, headers={"Authorization": "Bearer nope"}),
            401,
        )
    assert_problem(
        await gateway.post(
            "/v1/companies", content=b"{not json", headers={"Content-Type": "application/json"}
        ),
        401,
    )
    assert_problem(
        await gateway.post(
            "/v1/companies", json={"name": ""}, headers={"Authorization": f"Bearer {BOOTSTRAP}"}
        ),
        422,
    )
    created = await new_company(gateway)
    assert created["api_key"]["key"].startswith("ll_")
    assert created["administrator"]["role"] == "administrator"


async def test_missing_or_bad_key_is_401(gateway: httpx.AsyncClient) -> None:
    created = await new_company(gateway)
    assert_problem(await gateway.get("/v1/company"), 401)
    assert_problem(await gateway.get("/v1/leads/whoami"), 401)
    forged = created["api_key"]["key"][:-4] + "AAAA"
    assert_problem(
        await gateway.get("/v1/leads/whoami", headers={"Authorization": f"Bearer {forged}"}), 401
    )
    assert_problem(
        await gateway.get("/v1/company", headers={"Authorization": "Bearer ll_zz_zz"}), 401
    )


async def test_only_the_operator_token_signs_the_operator(  # type: ignore[no-untyped-def]
    postgres,
    nats_url: str,
    upstream: str,
    mail_sink: tuple[SmtpServer, str],
) -> None:
    url = await migrated_database(postgres, "leadline_gateway")
    token = "operator-" + uuid.uuid4().hex * 2
    route = f"/v1/operator/quotas/{uuid.uuid4()}/whoami"
    off = gateway_settings(url, nats_url, upstream, mail_sink, quota_url=upstream)
    async with running_app(create_app(off)) as gateway:
        refused = assert_problem(
            await gateway.get(route, headers={"Authorization": f"Bearer {token}"}), 401
        )
        assert refused["type"].endswith("operator-api-off")
    on = gateway_settings(
        url, nats_url, upstream, mail_sink, quota_url=upstream, operator_token=SecretStr(token)
    )
    async with running_app(create_app(on)) as gateway:
        created = await new_company(gateway)
        answer = await gateway.get(route, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200 and answer.json()["role"] == "operator", answer.text
        # a tenant administrator's key is no operator token, and the operator token is no API key
        assert_problem(await gateway.get(route, headers=bearer(created)), 401)
        assert_problem(await gateway.get(route), 401)
        assert_problem(
            await gateway.get("/v1/leads/whoami", headers={"Authorization": f"Bearer {token}"}), 401
        )
    with pytest.raises(ValueError, match="at least 32"):
        Settings(operator_token="short")
    with pytest.raises(ValueError, match="differ"):
        Settings(operator_token=token, bootstrap_token=token)


async def test_other_company_resources_are_404(gateway: httpx.AsyncClient) -> None:
    a, b = await new_company(gateway, "A"), await new_company(gateway, "B")
    response = await gateway.get(f"/v1/users/{b['administrator']['id']}", headers=bearer(a))
    assert_problem(response, 404)
    response = await gateway.patch(
        f"/v1/users/{b['administrator']['id']}", headers=bearer(a), json={"name": "taken over"}
    )
    assert_problem(response, 404)
    own = await gateway.get(f"/v1/users/{a['administrator']['id']}", headers=bearer(a))
    assert own.status_code == 200 and own.json()["company_id"] == a["company"]["id"]


async def test_a_malformed_cursor_is_a_400(gateway: httpx.AsyncClient) -> None:
    admin = await new_company(gateway)
    for bad in (
        "not-base64!",
        encode_cursor("yesterday", uuid.uuid4()),
        encode_cursor("2026-11-23T12:00:00", "x"),
    ):
        body = assert_problem(
            await gateway.get("/v1/users", headers=bearer(admin), params={"cursor": bad}), 400
        )
        assert body["type"].endswith("/invalid-cursor")


def mailed_code(mail_sink: tuple[SmtpServer, str], email: str) -> str:
    """The newest invitation code the system mailer delivered to ``email``."""
    server, _ = mail_sink
    with server.handler.lock:
        delivered = [r for r in server.handler.received if r.rcpt_tos == [email]]
    assert delivered, f"no invitation reached {email}"
    found = re.search(rb"Your invitation code: ([A-Za-z0-9_-]+)", delivered[-1].data)
    assert found, delivered[-1].data
    return found.group(1).decode()


async def invite(
    gateway: httpx.AsyncClient, admin: dict[str, Any], role: str = "salesperson"
) -> httpx.Response:
    email = f"sam-{uuid.uuid4().hex[:8]}@acme.example"
    return await gateway.post(
        "/v1/users", headers=bearer(admin), json={"email": email, "name": "Sam", "role": role}
    )


async def invited_key(
    gateway: httpx.AsyncClient,
    mail_sink: tuple[SmtpServer, str],
    admin: dict[str, Any],
    role: str = "salesperson",
) -> dict[str, str]:
    created = await invite(gateway, admin, role)
    assert created.status_code == 201, created.text
    email = created.json()["email"]
    claimed = await gateway.post(
        "/v1/invitations/claim",
        json={"invitation_code": mailed_code(mail_sink, email), "email": email},
    )
    assert claimed.status_code == 201, claimed.text
    return {"Authorization": f"Bearer {claimed.json()['key']}"}


async def test_an_invitation_code_reaches_only_the_invitee(
    gateway: httpx.AsyncClient, mail_sink: tuple[SmtpServer, str]
) -> None:
    """R1/R29: the administrator never sees the code; it is mailed to the invitee, bound to that address,
    single use, and the claim is recorded."""
    from sqlalchemy import select

    from leadline_gateway import models

    admin = await new_company(gateway)
    created = await invite(gateway, admin)
    assert created.status_code == 201, created.text
    user = created.json()
    code = mailed_code(mail_sink, user["email"])
    assert code not in created.text and "invitation_code" not in user
    assert user["invitation"]["sent_to"] == user["email"]
    server, _ = mail_sink
    mail = server.received_with(code.encode())[-1]
    assert (
        mail.mail_from == "no-reply@leadline.example"
        and b"Subject: Your Leadline invitation" in mail.data
    )
    other = {"invitation_code": code, "email": "someone-else@acme.example"}
    assert_problem(await gateway.post("/v1/invitations/claim", json=other), 404)
    claim = {"invitation_code": code, "email": user["email"]}
    claimed = await gateway.post("/v1/invitations/claim", json=claim)
    assert claimed.status_code == 201, claimed.text
    assert claimed.json()["user_id"] == user["id"]
    assert_problem(await gateway.post("/v1/invitations/claim", json=claim), 404)
    key = {"Authorization": f"Bearer {claimed.json()['key']}"}
    assert (await gateway.get(f"/v1/users/{user['id']}", headers=key)).status_code == 200
    runtime = gateway._transport.app.state.runtime  # type: ignore[attr-defined]
    async with runtime.db.session() as session:
        row = (
            await session.execute(
                select(models.invitation).where(
                    models.invitation.c.user_id == uuid.UUID(user["id"])
                )
            )
        ).one()
    assert row.claimed_at is not None and row.claimed_api_key_id == uuid.UUID(claimed.json()["id"])
    assert row.invited_by == uuid.UUID(admin["administrator"]["id"]) and row.email == user["email"]
    assert (row.expires_at - row.created_at).total_seconds() == 72 * 3600


async def test_an_invitation_expires_and_a_new_one_withdraws_the_old(
    gateway: httpx.AsyncClient, mail_sink: tuple[SmtpServer, str]
) -> None:
    from sqlalchemy import update

    from leadline_gateway import models

    admin = await new_company(gateway)
    user = (await invite(gateway, admin)).json()
    first = mailed_code(mail_sink, user["email"])
    again = await gateway.post(f"/v1/users/{user['id']}/invitation", headers=bearer(admin))
    assert again.status_code == 201, again.text
    second = mailed_code(mail_sink, user["email"])
    assert second != first and second not in again.text
    assert_problem(
        await gateway.post(
            "/v1/invitations/claim", json={"invitation_code": first, "email": user["email"]}
        ),
        404,
    )
    runtime = gateway._transport.app.state.runtime  # type: ignore[attr-defined]
    async with runtime.db.session() as session:
        await session.execute(
            update(models.invitation)
            .where(models.invitation.c.user_id == uuid.UUID(user["id"]))
            .values(expires_at=models.invitation.c.created_at)
        )
    assert_problem(
        await gateway.post(
            "/v1/invitations/claim", json={"invitation_code": second, "email": user["email"]}
        ),
        404,
    )


async def test_no_invitation_without_the_mailer(  # type: ignore[no-untyped-def]
    postgres,
    nats_url: str,
    upstream: str,
    mail_sink: tuple[SmtpServer, str],
) -> None:
    """A mailer that refuses (wrong password) is a 503, and the user is not created: inviting again works."""
    url = await migrated_database(postgres, "leadline_gateway")
    settings = gateway_settings(url, nats_url, upstream, mail_sink, mailer_password="wrong")
    async with running_app(create_app(settings)) as gateway:
        admin = await new_company(gateway)
        refused = await gateway.post(
            "/v1/users",
            headers=bearer(admin),
            json={"email": "kim@acme.example", "role": "salesperson"},
        )
        assert_problem(refused, 503)
        users = (await gateway.get("/v1/users", headers=bearer(admin))).json()["items"]
        assert [u["email"] for u in users] == [admin["administrator"]["email"]]


async def test_role_without_the_right_is_403(
    gateway: httpx.AsyncClient, mail_sink: tuple[SmtpServer, str]
) -> None:
    admin = await new_company(gateway)
    sales = await invited_key(gateway, mail_sink, admin)
    assert_problem(await gateway.get("/v1/users", headers=sales), 403)
    assert_problem(
        await gateway.patch("/v1/company", headers=sales, json={"mailbox_limit": 1}), 403
    )
    whoami_response = await gateway.get("/v1/leads/whoami", headers=sales)
    assert whoami_response.json()["role"] == "salesperson"


async def test_service_refuses_unsigned_requests(upstream: str) -> None:
    async with httpx.AsyncClient(base_url=upstream) as direct:
        assert_problem(await direct.get("/v1/leads/whoami"), 401)
        forged = {"X-Leadline-Identity": "eyJjIjoiMSJ9", "X-Leadline-Signature": "00" * 32}
        assert_problem(await direct.get("/v1/leads/whoami", headers=forged), 401)


async def test_routing_signs_identity_and_drops_client_identity(gateway: httpx.AsyncClient) -> None:
    created = await new_company(gateway)
    spoof = {"X-Leadline-Identity": "spoofed", "X-Leadline-Signature": "spoofed", **bearer(created)}
    response = await gateway.get("/v1/leads/whoami", headers=spoof)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "company_id": created["company"]["id"],
        "user_id": created["administrator"]["id"],
        "role": "administrator",
    }
    assert response.headers["x-request-id"]
    echoed = await gateway.post("/v1/leads/echo", headers=bearer(created), json={"hello": "wörld"})
    assert echoed.json()["body"] == {"hello": "wörld"}


async def test_the_sign_in_callback_is_public_and_passes_a_given_key_on(  # type: ignore[no-untyped-def]
    postgres, nats_url: str, upstream: str, mail_sink: tuple[SmtpServer, str]
) -> None:
    """Google and Microsoft send the browser back without an API key; its state alone names the user."""
    url = await migrated_database(postgres, "leadline_gateway")
    settings = gateway_settings(url, nats_url, upstream, mail_sink, sync_url=upstream)
    async with running_app(create_app(settings)) as gateway:
        created = await new_company(gateway)
        answer = await gateway.get("/v1/mail-sync/oauth/callback?code=c&state=s")
        assert answer.status_code == 200 and answer.json() == {
            "query": "code=c&state=s",
            "identity": False,
        }
        # a CRM page passing the redirect on with the user's key: the identity goes along, a bad key is 401
        answer = await gateway.get(
            "/v1/mail-sync/oauth/callback?code=c&state=s", headers=bearer(created)
        )
        assert answer.json()["identity"] is True
        assert_problem(
            await gateway.get(
                "/v1/mail-sync/oauth/callback", headers={"Authorization": "Bearer x"}
            ),
            401,
        )
        assert_problem(await gateway.post("/v1/mail-sync/oauth/gmail/start"), 401)
        # without a key the browser is sent on to the CRM's page, which finishes with the user's key
        answer = await gateway.get("/v1/mail-sync/oauth/callback?code=c&state=hand-off")
        assert (
            answer.status_code == 303
            and answer.headers["location"] == "https://crm.example/done?sign_in=h"
        )
        assert_problem(await gateway.post("/v1/mail-sync/oauth/finish", json={"sign_in": "h"}), 401)


async def test_malformed_json_is_422_problem(gateway: httpx.AsyncClient) -> None:
    created = await new_company(gateway)
    headers = {**bearer(created), "Content-Type": "application/json"}
    body = assert_problem(
        await gateway.post("/v1/users", headers=headers, content=b"{not json"), 422
    )
    assert body["errors"]
    assert_problem(await gateway.post("/v1/leads/echo", headers=headers, content=b"{not json"), 422)
    assert_problem(
        await gateway.post(
            "/v1/users", headers=bearer(created), json={"email": "x@y.example", "role": "emperor"}
        ),
        422,
    )
    assert_problem(
        await gateway.patch(
            "/v1/company", headers=bearer(created), json={"domains": ["not a domain"]}
        ),
        422,
    )
    # a JSON value of another type is refused, not coerced: 0 is not false, false is not 0, "5" is not 5
    before = (await gateway.get("/v1/company", headers=bearer(created))).json()
    for wrong in (
        {"block_own_domains": 0},
        {"block_own_domains": "yes"},
        {"mailbox_limit": False},
        {"mailbox_limit": "5"},
    ):
        assert_problem(await gateway.patch("/v1/company", headers=bearer(created), json=wrong), 422)
    assert (await gateway.get("/v1/company", headers=bearer(created))).json() == before


async def test_service_down_is_503_problem_quickly(gateway: httpx.AsyncClient) -> None:
    created = await new_company(gateway)
    started = asyncio.get_running_loop().time()
    body = assert_problem(await gateway.get("/v1/messages", headers=bearer(created)), 503)
    assert "not reachable" in body["detail"]
    assert asyncio.get_running_loop().time() - started < 5


async def test_rate_limit_gives_429_with_retry_after(gateway: httpx.AsyncClient) -> None:
    created = await new_company(gateway)
    # at once: one after another on a loaded machine, the bucket refills between requests
    statuses = await asyncio.gather(
        *(gateway.get("/v1/leads/whoami", headers=bearer(created)) for _ in range(60))
    )
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, "burst of 20 at 5/s should have been limited"
    assert int(limited[0].headers["retry-after"]) >= 1
    assert_problem(limited[0], 429)
    passed = [r for r in statuses if r.status_code == 200]
    assert len(passed) >= 20
    # the IETF draft's fields on every answer, so a client can pace itself
    assert {r.headers["ratelimit-limit"] for r in statuses} == {"20"}
    assert {r.headers["ratelimit-policy"] for r in statuses} == {"20;w=4"}
    remaining = sorted(int(r.headers["ratelimit-remaining"]) for r in passed)
    assert remaining[-1] == 19 and remaining[0] == 0
    assert (
        limited[0].headers["ratelimit-remaining"] == "0"
        and int(limited[0].headers["ratelimit-reset"]) >= 4
    )


async def test_company_settings_change_publishes_event(
    gateway: httpx.AsyncClient, nats_url: str
) -> None:
    import nats

    created = await new_company(gateway)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe("leadline.company.updated.v1", ordered_consumer=True)
        response = await gateway.patch(
            "/v1/company",
            headers=bearer(created),
            json={"mailbox_limit": 3, "block_own_domains": False},
        )
        assert response.status_code == 200 and response.json()["mailbox_limit"] == 3
        seen: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + 10
        import json

        while asyncio.get_running_loop().time() < deadline:
            try:
                msg = await sub.next_msg(timeout=1)
            except Exception:  # noqa: S112 - nothing yet
                continue
            event = json.loads(msg.data)
            if event["company_id"] == created["company"]["id"]:
                seen.append(event)
                if event["payload"]["mailbox_limit"] == 3:
                    break
        assert seen and seen[-1]["payload"] == {
            "name": "Acme",
            "domains": ["acme.example"],
            "block_own_domains": False,
            "mailbox_limit": 3,
        }
    finally:
        await nc.close()


async def test_openapi_merges_services(gateway: httpx.AsyncClient) -> None:
    document = (await gateway.get("/openapi.json")).json()
    assert "/v1/companies" in document["paths"]
    assert "/v1/leads/whoami" in document["paths"]
    users = document["paths"]["/v1/users"]
    assert (
        users["get"]["x-leadline-roles"] == users["post"]["x-leadline-roles"] == ["administrator"]
    )
    assert "x-leadline-roles" not in document["paths"]["/v1/api-keys"]["get"]
    for status in ("401", "403", "404", "422"):
        assert "application/problem+json" in users["post"]["responses"][status]["content"]
    links = users["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in links.values()} == {
        document["paths"]["/v1/users/{user_id}"][m]["operationId"]
        for m in ("get", "patch", "delete")
    } | {document["paths"]["/v1/users/{user_id}/invitation"]["post"]["operationId"]}


async def test_method_not_allowed_names_every_method_of_the_path(
    gateway: httpx.AsyncClient,
) -> None:
    refused = assert_problem(await gateway.request("OPTIONS", "/v1/company"), 405)
    assert refused["type"].endswith("/method-not-allowed")
    assert (await gateway.put("/v1/company")).headers["allow"] == "GET, PATCH"


async def test_a_failed_commit_is_never_answered_with_success(gateway: httpx.AsyncClient) -> None:
    """The unit of work commits before the response: a check that fails only at COMMIT gives no 201."""
    from sqlalchemy import func, select, text

    from leadline_gateway import models

    created = await new_company(gateway)
    runtime = gateway._transport.app.state.runtime  # type: ignore[attr-defined]
    async with runtime.db.session() as session:
        await session.execute(
            text(
                "CREATE FUNCTION gateway.refuse_named_keys() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN IF NEW.name = 'refused-at-commit' THEN RAISE EXCEPTION 'refused at commit'; END IF; "
                "RETURN NEW; END $$"
            )
        )
        await session.execute(
            text(
                "CREATE CONSTRAINT TRIGGER refuse_named_keys AFTER INSERT ON gateway.api_key "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gateway.refuse_named_keys()"
            )
        )
    response = await gateway.post(
        "/v1/api-keys", headers=bearer(created), json={"name": "refused-at-commit"}
    )
    assert response.status_code == 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    async with runtime.db.session() as session:
        stored = await session.scalar(
            select(func.count())
            .select_from(models.api_key)
            .where(models.api_key.c.name == "refused-at-commit")
        )
    assert stored == 0


async def test_api_keys_are_listed_revoked_and_expire(
    gateway: httpx.AsyncClient, mail_sink: tuple[SmtpServer, str]
) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from leadline_gateway import models

    admin, other = await new_company(gateway), await new_company(gateway, "Other")
    sales = await invited_key(gateway, mail_sink, admin)
    extra = await gateway.post("/v1/api-keys", headers=sales, json={"name": "laptop"})
    assert extra.status_code == 201, extra.text
    own = (await gateway.get("/v1/api-keys", headers=sales)).json()["items"]
    assert sorted(k["name"] for k in own) == ["", "laptop"] and "key" not in own[0]
    company = (await gateway.get("/v1/api-keys", headers=bearer(admin))).json()["items"]
    assert {k["id"] for k in own} | {admin["api_key"]["id"]} == {k["id"] for k in company}
    assert (await gateway.get("/v1/api-keys", headers=bearer(other))).json()["items"] == [
        {k: v for k, v in other["api_key"].items() if k != "key"}
    ]
    # nobody revokes a key of another company, nor (unless administrator) another user's
    assert_problem(
        await gateway.delete(f"/v1/api-keys/{extra.json()['id']}", headers=bearer(other)), 404
    )
    assert_problem(
        await gateway.delete(f"/v1/api-keys/{admin['api_key']['id']}", headers=sales), 404
    )
    assert (
        await gateway.delete(f"/v1/api-keys/{extra.json()['id']}", headers=bearer(admin))
    ).status_code == 204
    assert_problem(
        await gateway.get(
            "/v1/leads/whoami", headers={"Authorization": f"Bearer {extra.json()['key']}"}
        ),
        401,
    )
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert_problem(
        await gateway.post("/v1/api-keys", headers=sales, json={"expires_at": past}), 422
    )
    soon = await gateway.post(
        "/v1/api-keys",
        headers=sales,
        json={"expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()},
    )
    assert soon.status_code == 201 and soon.json()["expires_at"]
    expiring = {"Authorization": f"Bearer {soon.json()['key']}"}
    assert (await gateway.get("/v1/leads/whoami", headers=expiring)).status_code == 200
    runtime = gateway._transport.app.state.runtime  # type: ignore[attr-defined]
    async with runtime.db.session() as session:
        await session.execute(
            update(models.api_key)
            .where(models.api_key.c.id == uuid.UUID(soon.json()["id"]))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert_problem(await gateway.get("/v1/leads/whoami", headers=expiring), 401)


async def test_a_revoked_key_is_refused_at_once_by_every_gateway_process(  # type: ignore[no-untyped-def]
    postgres, nats_url: str, upstream: str, mail_sink: tuple[SmtpServer, str]
) -> None:
    """Two gateway processes on one database; also the cap on a user's active keys."""
    url = await migrated_database(postgres, "leadline_gateway")
    async with (
        running_app(
            create_app(gateway_settings(url, nats_url, upstream, mail_sink, api_keys_per_user=3))
        ) as first,
        running_app(create_app(gateway_settings(url, nats_url, upstream, mail_sink))) as second,
    ):
        admin = await new_company(first)
        keys = [
            await first.post("/v1/api-keys", headers=bearer(admin), json={"name": f"k{i}"})
            for i in range(3)
        ]
        assert [k.status_code for k in keys] == [201, 201, 409]
        assert keys[2].json()["type"].endswith("/api-key-limit")
        key = {"Authorization": f"Bearer {keys[1].json()['key']}"}
        assert (await second.get("/v1/leads/whoami", headers=key)).status_code == 200
        assert (await first.get("/v1/leads/whoami", headers=key)).status_code == 200
        assert (
            await first.delete(f"/v1/api-keys/{keys[1].json()['id']}", headers=key)
        ).status_code == 204
        assert_problem(await second.get("/v1/leads/whoami", headers=key), 401)
        assert_problem(await first.get("/v1/company", headers=key), 401)
        again = await first.post(
            "/v1/api-keys", headers=bearer(admin), json={"name": "after revoking one"}
        )
        assert again.status_code == 201, again.text


async def raw_request(
    client: httpx.AsyncClient, method: str, raw_path: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A request whose path reaches the app exactly as given (an HTTP client would normalise dot segments)."""
    from urllib.parse import unquote_to_bytes

    app = client._transport.app  # type: ignore[attr-defined]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote_to_bytes(raw_path).decode("latin-1"),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "server": ("gateway", 80),
        "client": ("127.0.0.1", 1),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


async def test_dot_segments_and_encoded_separators_are_refused_before_routing(  # type: ignore[no-untyped-def]
    postgres, nats_url: str, upstream: str, mail_sink: tuple[SmtpServer, str]
) -> None:
    """``/v1/unsubscribe`` is public: ``..`` after it reached the service's own /metrics and /openapi.json."""
    url = await migrated_database(postgres, "leadline_gateway")
    settings = gateway_settings(url, nats_url, upstream, mail_sink, send_url=upstream)
    async with running_app(create_app(settings)) as gateway:
        created = await new_company(gateway)
        for raw in (
            b"/v1/unsubscribe/../../metrics",
            b"/v1/unsubscribe/%2e%2e/%2E%2E/openapi.json",
            b"/v1/unsubscribe/..%2f..%2fmetrics",
            b"/v1/unsubscribe%2f..%2f..%2fmetrics",
            b"/v1/leads/../../metrics",
            b"/v1/leads/./whoami",
            b"/v1/leads\\..\\..\\metrics",
            b"/v1/leads/%2e/whoami",
            b"/v1/leads/who%00ami",
            b"/v1/../v1/company",
        ):
            status, headers, body = await raw_request(gateway, "GET", raw, bearer(created))
            assert status == 400, (raw, status, body[:200])
            assert headers["content-type"].startswith("application/problem+json")
            assert b"/invalid-path" in body and b"leadline_http_requests_total" not in body
        status, _, body = await raw_request(gateway, "GET", b"/v1/leads/whoami", bearer(created))
        assert status == 200, body


async def test_the_gateway_metrics_need_the_operator_token(  # type: ignore[no-untyped-def]
    postgres, nats_url: str, upstream: str, mail_sink: tuple[SmtpServer, str]
) -> None:
    url = await migrated_database(postgres, "leadline_gateway")
    async with running_app(
        create_app(gateway_settings(url, nats_url, upstream, mail_sink))
    ) as closed:
        assert_problem(await closed.get("/metrics"), 404)
    token = "metrics-token-for-prometheus"
    settings = gateway_settings(url, nats_url, upstream, mail_sink, metrics_token=token)
    async with running_app(create_app(settings)) as gateway:
        assert_problem(await gateway.get("/metrics"), 401)
        assert_problem(
            await gateway.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401
        )
        created = await new_company(gateway)
        assert_problem(await gateway.get("/metrics", headers=bearer(created)), 401)
        scraped = await gateway.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert scraped.status_code == 200 and "leadline_http_requests_total" in scraped.text


async def test_the_operator_provisions_users_for_a_crm_with_its_own_login(  # type: ignore[no-untyped-def]
    postgres, nats_url: str, upstream: str, mail_sink: tuple[SmtpServer, str]
) -> None:
    """SSO: the operator token (never a tenant key) makes a user and their keys; no administrator involved."""
    url = await migrated_database(postgres, "leadline_gateway")
    token = {"Authorization": "Bearer operator-" + uuid.uuid4().hex * 2}
    settings = gateway_settings(
        url, nats_url, upstream, mail_sink, operator_token=token["Authorization"][7:]
    )
    async with running_app(create_app(settings)) as gateway:
        a, b = await new_company(gateway, "A"), await new_company(gateway, "B")
        route = f"/v1/operator/companies/{a['company']['id']}/users"
        body = {
            "email": "sso-user@acme.example",
            "name": "Sso",
            "role": "sales_manager",
            "key_name": "crm",
        }
        for refused in (bearer(a), {"Authorization": f"Bearer {BOOTSTRAP}"}, {}):
            assert_problem(await gateway.post(route, headers=refused, json=body), 401)
            assert_problem(await gateway.post(route, headers=refused, json={"email": 1}), 401)
        made = await gateway.post(route, headers=token, json=body)
        assert made.status_code == 201, made.text
        user, key = made.json()["user"], made.json()["api_key"]
        assert user["company_id"] == a["company"]["id"] and key["user_id"] == user["id"]
        whoami_response = await gateway.get(
            "/v1/leads/whoami", headers={"Authorization": f"Bearer {key['key']}"}
        )
        assert whoami_response.json() == {
            "company_id": a["company"]["id"],
            "user_id": user["id"],
            "role": "sales_manager",
        }
        assert_problem(await gateway.post(route, headers=token, json=body), 409)
        unknown = f"/v1/operator/companies/{uuid.uuid4()}/users"
        assert_problem(await gateway.post(unknown, headers=token, json=body), 404)
        another = await gateway.post(
            f"{route}/{user['id']}/api-keys", headers=token, json={"name": "sign-in"}
        )
        assert another.status_code == 201 and another.json()["user_id"] == user["id"]
        # a user is only reached through their own company
        elsewhere = f"/v1/operator/companies/{b['company']['id']}/users/{user['id']}/api-keys"
        assert_problem(await gateway.post(elsewhere, headers=token, json={}), 404)
