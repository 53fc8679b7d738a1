"""Lead CRUD over HTTP: normalised addresses, one lead per address, stages, search, events, isolation."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

import httpx
from leadtest import create_lead, events_on_stream, eventually
from nats.js import JetStreamContext

from leadline_kit import bus
from leadline_kit.identity import Identity
from leadline_kit.testing.clients import make_identity
from leadline_proto.requests import LeadDirectoryReply, LeadDirectoryRequest
from leadline_proto.subjects import RPC_LEAD_DIRECTORY

PROBLEM = "application/problem+json"


async def test_create_normalises_addresses_and_publishes_lead_created(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    lead = await create_lead(
        api,
        "  Ana.Silva@Example.COM ",
        "josé@Bücher.de",
        "ana.silva@example.com",
        name="Ana Silva",
        account_name="Acme",
        stage="qualified",
    )
    assert lead["addresses"] == ["ana.silva@example.com", "josé@xn--bcher-kva.de"]
    assert lead["stage"] == "qualified" and lead["owner_user_id"] == str(admin.user_id)
    assert lead["unsubscribed"] is False and lead["mail_status"] == "ok"
    fetched = (await api.get(f"/v1/leads/{lead['id']}")).json()
    assert fetched == lead

    found: list[dict[str, object]] = []

    async def published() -> bool:
        nonlocal found
        found = await events_on_stream(js, "leadline.lead.created.v1", admin.company_id)
        return bool(found)

    await eventually(published, what="lead.created on the stream")
    payload = found[0]["payload"]
    assert isinstance(payload, dict)
    assert payload["lead_id"] == lead["id"]
    assert payload["addresses"] == lead["addresses"]
    assert payload["created_at"] and payload["stage"] == "qualified"


async def test_an_address_belongs_to_one_lead_per_company(
    api: httpx.AsyncClient, caller: Callable[[Identity], httpx.AsyncClient]
) -> None:
    first = await create_lead(api, "shared@example.com")
    again = await api.post("/v1/leads", json={"name": "Other", "addresses": ["SHARED@example.com"]})
    assert again.status_code == 409 and again.headers["content-type"] == PROBLEM
    assert again.json()["type"].endswith("/address-taken")
    # nothing of the refused lead was kept
    assert len((await api.get("/v1/leads")).json()["items"]) == 1
    second = await create_lead(api, "other@example.com")
    taken = await api.patch(
        f"/v1/leads/{second['id']}", json={"addresses": ["other@example.com", "shared@example.com"]}
    )
    assert taken.status_code == 409
    # another company may hold the same address
    elsewhere = caller(make_identity("salesperson"))
    assert (
        await elsewhere.post("/v1/leads", json={"name": "X", "addresses": ["shared@example.com"]})
    ).status_code == 201
    assert (await api.get(f"/v1/leads/{first['id']}")).json()["addresses"] == ["shared@example.com"]


async def test_patch_changes_fields_and_replaces_addresses(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    lead = await create_lead(api, "a@example.com", "b@example.com")
    response = await api.patch(
        f"/v1/leads/{lead['id']}",
        json={
            "name": "Renamed",
            "stage": "won",
            "addresses": ["c@example.com", "a@example.com"],
            "owner_user_id": None,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "Renamed" and body["stage"] == "won" and body["owner_user_id"] is None
    assert body["addresses"] == ["c@example.com", "a@example.com"]
    # b@ is free again
    await create_lead(api, "b@example.com")

    async def published() -> bool:
        updates = await events_on_stream(js, "leadline.lead.updated.v1", admin.company_id)
        return any(e["payload"]["addresses"] == ["c@example.com", "a@example.com"] for e in updates)

    await eventually(published, what="lead.updated on the stream")


async def test_delete_removes_the_lead_and_frees_its_addresses(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    lead = await create_lead(api, "gone@example.com")
    assert (await api.delete(f"/v1/leads/{lead['id']}")).status_code == 204
    assert (await api.get(f"/v1/leads/{lead['id']}")).status_code == 404
    assert (await api.delete(f"/v1/leads/{lead['id']}")).status_code == 404
    await create_lead(api, "gone@example.com")

    async def published() -> bool:
        deleted = await events_on_stream(js, "leadline.lead.deleted.v1", admin.company_id)
        return [e["payload"]["lead_id"] for e in deleted] == [lead["id"]]

    await eventually(published, what="lead.deleted on the stream")


async def test_list_paginates_with_a_cursor_and_searches(api: httpx.AsyncClient) -> None:
    for i in range(7):
        await create_lead(
            api,
            f"person{i}@corp{i % 2}.example",
            name=f"Person {i}",
            account_name="Globex" if i == 3 else "",
        )
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/leads", params=params)).json()
        seen += [lead["name"] for lead in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"Person {i}" for i in reversed(range(7))]
    by_address = (await api.get("/v1/leads", params={"q": "PERSON4@"})).json()["items"]
    assert [lead["name"] for lead in by_address] == ["Person 4"]
    by_name = (await api.get("/v1/leads", params={"q": "son 5"})).json()["items"]
    assert [lead["name"] for lead in by_name] == ["Person 5"]
    by_account = (await api.get("/v1/leads", params={"q": "globex"})).json()["items"]
    assert [lead["name"] for lead in by_account] == ["Person 3"]
    wildcard = (await api.get("/v1/leads", params={"q": "%"})).json()["items"]
    assert wildcard == []
    bad = await api.get("/v1/leads", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400 and bad.headers["content-type"] == PROBLEM


async def test_bad_input_is_a_problem(api: httpx.AsyncClient) -> None:
    cases = [
        {"name": "X", "addresses": ["not-an-address"]},
        {"name": "X", "addresses": ["a@nodot"]},
        {"name": "X", "addresses": ["a@example.com"], "stage": "dreaming"},
        {"name": "X" * 201, "addresses": ["a@example.com"]},
        {"name": "", "addresses": ["a@example.com"]},
        {"name": "X", "addresses": []},
        {"name": "X", "addresses": [f"a{i}@example.com" for i in range(21)]},
        {"name": "X", "addresses": ["a" * 250 + "@example.com"]},
        {"name": "X", "addresses": ["a@example.com"], "unknown": 1},
        {"name": "X", "addresses": ["a@example.com\r\nBcc: evil@example.com"]},
    ]
    for body in cases:
        response = await api.post("/v1/leads", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == PROBLEM
    lead = await create_lead(api, "ok@example.com")
    bad_stage = await api.patch(f"/v1/leads/{lead['id']}", json={"stage": "unknown"})
    assert bad_stage.status_code == 422 and bad_stage.headers["content-type"] == PROBLEM
    assert (await api.get("/v1/leads/not-a-uuid")).status_code == 422
    assert (await api.get(f"/v1/leads/{uuid.uuid4()}")).status_code == 404


async def test_every_role_may_work_on_leads(
    caller: Callable[[Identity], httpx.AsyncClient], company: uuid.UUID
) -> None:
    for role in (
        "jr_salesperson",
        "salesperson",
        "marketing_manager",
        "sales_manager",
        "company_manager",
    ):
        client = caller(make_identity(role, company))
        lead = await create_lead(client, f"{role}@example.com")
        assert (
            await client.patch(f"/v1/leads/{lead['id']}", json={"stage": "contacted"})
        ).status_code == 200


async def test_unsigned_requests_are_refused(service: httpx.AsyncClient) -> None:
    response = await service.get("/v1/leads")
    assert response.status_code == 401 and response.headers["content-type"] == PROBLEM


async def test_another_companys_ids_are_not_found(
    api: httpx.AsyncClient, caller: Callable[[Identity], httpx.AsyncClient]
) -> None:
    lead = await create_lead(api, "mine@example.com")
    entry = (await api.post("/v1/blocklist", json={"value": "blocked@example.com"})).json()
    stranger = caller(make_identity("administrator"))
    lead_url = f"/v1/leads/{lead['id']}"
    for method, url, body in [
        ("GET", lead_url, None),
        ("PATCH", lead_url, {"name": "Stolen"}),
        ("DELETE", lead_url, None),
        ("GET", f"{lead_url}/timeline", None),
        ("DELETE", f"/v1/blocklist/{entry['id']}", None),
    ]:
        response = await stranger.request(method, url, json=body)
        assert response.status_code == 404, (method, url, response.text)
        assert response.headers["content-type"] == PROBLEM
    assert (await stranger.get("/v1/leads")).json()["items"] == []
    assert (await stranger.get("/v1/blocklist")).json()["items"] == []
    assert (await api.get(lead_url)).json()["name"] == "Lead"


async def test_control_characters_and_nul_are_a_4xx_never_a_500(api: httpx.AsyncClient) -> None:
    """NUL reached PostgreSQL (a 500); names and other text fields refuse control characters at the API."""
    lead = await create_lead(api, "plain@example.com")
    for bad in (
        "a\x00b",
        "a\x01b",
        "tab\there",
        "line\u2028break",
        "next\x85line",
        "para\u2029graph",
    ):
        for body in (
            {"name": bad, "addresses": ["x@example.com"]},
            {"name": "X", "account_name": bad, "addresses": ["x@example.com"]},
            {"name": "X", "addresses": [f"x{bad}y@example.com"]},
        ):
            response = await api.post("/v1/leads", json=body)
            assert response.status_code == 422 and response.headers["content-type"] == PROBLEM, (
                body,
                response.text,
            )
        patched = await api.patch(f"/v1/leads/{lead['id']}", json={"name": bad})
        assert patched.status_code == 422 and patched.headers["content-type"] == PROBLEM, (
            patched.text
        )
        searched = await api.get("/v1/leads", params={"q": bad})
        assert searched.status_code == 422 and searched.headers["content-type"] == PROBLEM, (
            searched.text
        )
        blocked = await api.post("/v1/blocklist", json={"value": f"x{bad}@example.com"})
        assert blocked.status_code == 422 and blocked.headers["content-type"] == PROBLEM, (
            blocked.text
        )


async def test_an_out_of_range_cursor_is_a_400_on_every_listing(api: httpx.AsyncClient) -> None:
    from leadline_kit.pagination import encode_cursor

    for moment in (
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
        "2026-11-23T12:00:00",
        "x\x00",
    ):
        for path in ("/v1/leads", "/v1/blocklist"):
            response = await api.get(path, params={"cursor": encode_cursor(moment, uuid.uuid4())})
            assert response.status_code == 400 and response.headers["content-type"] == PROBLEM, (
                moment,
                response.text,
            )


async def test_a_leads_owner_is_a_user_of_the_callers_company(
    api: httpx.AsyncClient, admin: Identity, js: JetStreamContext
) -> None:
    from leadtest import publish

    from leadline_proto.events import UserDeletedV1, UserPayload, UserUpdatedV1

    colleague, stranger = uuid.uuid4(), uuid.uuid4()
    await publish(
        js,
        UserUpdatedV1(
            company_id=admin.company_id,
            payload=UserPayload(
                user_id=colleague, email="colleague@acme.example", role="salesperson"
            ),
        ),
        UserUpdatedV1(
            company_id=uuid.uuid4(),
            payload=UserPayload(
                user_id=stranger, email="stranger@other.example", role="administrator"
            ),
        ),
    )

    async def colleague_known() -> bool:
        response = await api.post(
            "/v1/leads",
            json={
                "name": "Owned",
                "addresses": ["owned@example.com"],
                "owner_user_id": str(colleague),
            },
        )
        return response.status_code == 201

    await eventually(colleague_known, what="the colleague's user.updated applied")
    for other in (stranger, uuid.uuid4()):
        refused = await api.post(
            "/v1/leads",
            json={"name": "X", "addresses": ["x@example.com"], "owner_user_id": str(other)},
        )
        assert refused.status_code == 422 and refused.json()["type"].endswith("/unknown-owner"), (
            refused.text
        )
    lead = await create_lead(api, "mine@example.com")
    assert (
        await api.patch(f"/v1/leads/{lead['id']}", json={"owner_user_id": str(stranger)})
    ).status_code == 422
    assert (
        await api.patch(f"/v1/leads/{lead['id']}", json={"owner_user_id": str(colleague)})
    ).status_code == 200
    await publish(
        js,
        UserDeletedV1(
            company_id=admin.company_id,
            payload=UserPayload(
                user_id=colleague, email="colleague@acme.example", role="salesperson"
            ),
        ),
    )

    async def colleague_gone() -> bool:
        response = await api.patch(
            f"/v1/leads/{lead['id']}", json={"owner_user_id": str(colleague)}
        )
        return response.status_code == 422

    await eventually(colleague_gone, what="the colleague's user.deleted applied")


async def test_the_sync_service_may_ask_how_many_leads_a_company_has(
    api: httpx.AsyncClient, nats_url: str, admin: Identity
) -> None:
    nc, _ = await bus.connect(nats_url, "lead-directory-asker")
    try:

        async def ask(data: bytes) -> LeadDirectoryReply:
            return LeadDirectoryReply.model_validate_json(
                (await nc.request(RPC_LEAD_DIRECTORY, data, timeout=5)).data
            )

        request = LeadDirectoryRequest(company_id=admin.company_id).model_dump_json().encode()
        empty = await ask(request)
        assert empty.leads == 0 and empty.newest_created_at is None and empty.as_of is not None
        await create_lead(api, "one@example.com")
        newest = await create_lead(api, "two@example.com", "deux@example.com")
        other = await ask(LeadDirectoryRequest(company_id=uuid.uuid4()).model_dump_json().encode())
        reply = await ask(request)
        assert (reply.leads, other.leads) == (2, 0)
        assert reply.newest_created_at == datetime.fromisoformat(newest["created_at"])
        assert reply.as_of is not None and reply.as_of >= reply.newest_created_at
        invalid = await ask(b'{"company_id": "not a uuid"}')
        assert invalid.as_of is None and invalid.detail
    finally:
        await nc.close()
