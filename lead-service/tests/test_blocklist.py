"""Blocklist (R6): entries, roles, purging timelines, and the company's own domains blocked by default."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import httpx
from leadtest import (
    create_lead,
    events_on_stream,
    eventually,
    publish,
    synced,
    timeline_of,
    wait_for_timeline,
)
from nats.js import JetStreamContext

from leadline_kit.identity import Identity
from leadline_kit.testing.clients import make_identity
from leadline_proto.events import CompanyPayload, CompanyUpdatedV1, MailSyncedV1, utcnow


def company_updated(
    company: uuid.UUID, domains: list[str], block_own_domains: bool = True, seconds: int = 0
) -> CompanyUpdatedV1:
    return CompanyUpdatedV1(
        company_id=company,
        occurred_at=utcnow() + timedelta(seconds=seconds),
        payload=CompanyPayload(name="MyCorp", domains=domains, block_own_domains=block_own_domains),
    )


async def test_adding_an_address_purges_its_mail_and_publishes(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    company = admin.company_id
    lead = await create_lead(api, "work@example.com", "private@home.example")
    await publish(
        js,
        synced(
            company, message_id="<w@x>", from_address="work@example.com", to=["me@mycorp.example"]
        ),
        synced(
            company,
            message_id="<p@x>",
            from_address="private@home.example",
            to=["me@mycorp.example"],
            minutes=1,
        ),
        synced(
            company,
            message_id="<both@x>",
            from_address="me@mycorp.example",
            direction="outbound",
            to=["work@example.com", "private@home.example"],
            minutes=2,
        ),
    )
    await wait_for_timeline(api, lead["id"], 3)
    response = await api.post("/v1/blocklist", json={"value": "Private@Home.example"})
    assert response.status_code == 201, response.text
    entry = response.json()
    assert entry["kind"] == "address" and entry["value"] == "private@home.example"
    # the message that also involves the lead's unblocked address stays
    assert [i["message_id"] for i in await timeline_of(api, lead["id"])] == ["<both@x>", "<w@x>"]
    # and new mail from the blocked address is never kept
    await publish(
        js,
        synced(
            company,
            message_id="<p2@x>",
            from_address="private@home.example",
            to=["me@mycorp.example"],
            minutes=3,
        ),
        synced(
            company,
            message_id="<w2@x>",
            from_address="work@example.com",
            to=["me@mycorp.example"],
            minutes=4,
        ),
    )
    items = await wait_for_timeline(api, lead["id"], 3)
    assert [i["message_id"] for i in items] == ["<w2@x>", "<both@x>", "<w@x>"]
    assert (
        await api.post("/v1/blocklist", json={"value": "private@home.example"})
    ).status_code == 409

    async def published() -> bool:
        added = await events_on_stream(js, "leadline.blocklist.added.v1", company)
        return [e["payload"] for e in added] == [
            {"entry_id": entry["id"], "kind": "address", "value": "private@home.example"}
        ]

    await eventually(published, what="blocklist.added")
    assert (await api.delete(f"/v1/blocklist/{entry['id']}")).status_code == 204
    assert (await api.get("/v1/blocklist")).json()["items"] == []

    async def removed() -> bool:
        return len(await events_on_stream(js, "leadline.blocklist.removed.v1", company)) == 1

    await eventually(removed, what="blocklist.removed")


async def test_adding_a_domain_purges_its_mail(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    company = admin.company_id
    kept = await create_lead(api, "someone@keep.example")
    look_alike = await create_lead(api, "c@notbücher.example")
    dropped = await create_lead(api, "a@bücher.example", "b@mail.xn--bcher-kva.example")
    await publish(
        js,
        synced(
            company, message_id="<k@x>", from_address="someone@keep.example", to=["me@m.example"]
        ),
        synced(
            company, message_id="<l@x>", from_address="c@notbücher.example", to=["me@m.example"]
        ),
        synced(
            company, message_id="<d@x>", from_address="a@xn--bcher-kva.example", to=["me@m.example"]
        ),
        synced(
            company, message_id="<s@x>", from_address="b@mail.bücher.example", to=["me@m.example"]
        ),
    )
    await wait_for_timeline(api, kept["id"], 1)
    await wait_for_timeline(api, look_alike["id"], 1)
    await wait_for_timeline(api, dropped["id"], 2)
    response = await api.post("/v1/blocklist", json={"value": "@Bücher.example"})
    assert response.status_code == 201, response.text
    assert response.json() == {
        **response.json(),
        "kind": "domain",
        "value": "xn--bcher-kva.example",
    }
    # the domain and its subdomains are purged; a look-alike domain is not
    assert await timeline_of(api, dropped["id"]) == []
    assert len(await timeline_of(api, kept["id"])) == 1
    assert len(await timeline_of(api, look_alike["id"])) == 1
    # and their new mail is never kept
    await publish(
        js,
        synced(
            company,
            message_id="<s2@x>",
            from_address="b@mail.xn--bcher-kva.example",
            to=["me@m.example"],
            minutes=1,
        ),
        synced(
            company,
            message_id="<k2@x>",
            from_address="someone@keep.example",
            to=["me@m.example"],
            minutes=2,
        ),
    )
    await wait_for_timeline(api, kept["id"], 2)
    assert await timeline_of(api, dropped["id"]) == []
    for bad in ("nodot", "bad_domain!.example", "@", "x" * 300):
        assert (
            await api.post("/v1/blocklist", json={"value": bad, "kind": "domain"})
        ).status_code == 422


async def test_only_administrators_and_company_managers_change_the_blocklist(
    caller: Callable[[Identity], httpx.AsyncClient], company: uuid.UUID
) -> None:
    manager = caller(make_identity("company_manager", company))
    entry = (await manager.post("/v1/blocklist", json={"value": "x@example.com"})).json()
    for role in ("marketing_manager", "sales_manager", "salesperson", "jr_salesperson"):
        client = caller(make_identity(role, company))
        refused = await client.post("/v1/blocklist", json={"value": f"{role}@example.com"})
        assert refused.status_code == 403, role
        assert refused.headers["content-type"] == "application/problem+json"
        assert (await client.delete(f"/v1/blocklist/{entry['id']}")).status_code == 403
        assert [e["value"] for e in (await client.get("/v1/blocklist")).json()["items"]] == [
            "x@example.com"
        ]


async def test_own_domains_are_blocked_by_default_and_the_switch_turns_it_off(
    api: httpx.AsyncClient, js: JetStreamContext, admin: Identity
) -> None:
    company = admin.company_id
    colleague = await create_lead(api, "colleague@mycorp.example")
    outsider = await create_lead(api, "outsider@example.com")

    def mail(n: int, sender: str) -> MailSyncedV1:
        return synced(
            company,
            message_id=f"<own{n}@x>",
            from_address=sender,
            to=["me@mycorp.example"],
            minutes=n,
        )

    # before the company's domains are known, the colleague's mail is kept
    await publish(js, mail(0, "colleague@mycorp.example"))
    await wait_for_timeline(api, colleague["id"], 1)
    # the company's own domain is blocklisted by default: its mail is purged and never kept again
    await publish(
        js,
        company_updated(company, ["MyCorp.example"]),
        mail(1, "colleague@mycorp.example"),
        mail(2, "outsider@example.com"),
    )
    await wait_for_timeline(api, outsider["id"], 1)
    assert await timeline_of(api, colleague["id"]) == []
    listing = (await api.get("/v1/blocklist")).json()
    assert listing["own_domains"] == ["mycorp.example"] and listing["own_domains_blocked"] is True

    # an administrator turns the switch off: own-domain mail is kept from then on
    await publish(
        js,
        company_updated(company, ["mycorp.example"], block_own_domains=False, seconds=1),
        mail(3, "colleague@mycorp.example"),
    )
    items = await wait_for_timeline(api, colleague["id"], 1)
    assert [i["message_id"] for i in items] == ["<own3@x>"]
    # a late, older company.updated does not turn it back on
    await publish(
        js,
        company_updated(company, ["mycorp.example"], block_own_domains=True, seconds=-60),
        mail(4, "colleague@mycorp.example"),
    )
    await wait_for_timeline(api, colleague["id"], 2)
    assert (await api.get("/v1/blocklist")).json()["own_domains_blocked"] is False


async def test_blocklist_pages_with_a_cursor(api: httpx.AsyncClient) -> None:
    for value in ("a@example.com", "b.example", "c@example.com"):
        assert (await api.post("/v1/blocklist", json={"value": value})).status_code == 201
    first = (await api.get("/v1/blocklist", params={"limit": 2})).json()
    second = (
        await api.get("/v1/blocklist", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert [e["value"] for e in first["items"] + second["items"]] == [
        "c@example.com",
        "b.example",
        "a@example.com",
    ]
    assert second["next_cursor"] is None
    assert (await api.get("/v1/blocklist", params={"cursor": "garbage"})).status_code == 400
