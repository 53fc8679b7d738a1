"""The synced address is proven before a mailbox is enabled (R29), and synced by one mailbox per company."""

from __future__ import annotations

import uuid

from leadline_kit.testing.clients import make_identity, running_app
from leadline_sync.mailbox.proof import PROOF_HEADER


async def inbox_with_proof(world, account) -> list[int]:  # type: ignore[no-untyped-def]
    client = await world.imap(account)
    try:
        await client.select("INBOX")
        uids: list[int] = await client.uids_with_header(PROOF_HEADER, "")
        return uids
    finally:
        await client.logout()


async def test_the_address_is_proven_through_smtp_into_the_inbox_and_the_proof_deleted(  # type: ignore[no-untyped-def]
    world,
) -> None:
    me = world.account()
    async with running_app(world.app()) as service:
        api = world.caller(service, me.user)
        connected = await api.put("/v1/mail-sync", json=world.connect_body(me))
        assert connected.status_code == 200, connected.text
        assert (
            connected.json()["address_proven_by"] == "message"
            and connected.json()["address_proven_at"]
        )
        proven_at = connected.json()["address_proven_at"]
        # saving the same logins again (a new password would too) keeps the proof
        again = await api.put("/v1/mail-sync", json=world.connect_body(me))
        assert again.json()["address_proven_at"] == proven_at
    assert await inbox_with_proof(world, me) == []


async def test_an_address_the_logins_do_not_receive_is_refused_with_a_fix(world) -> None:  # type: ignore[no-untyped-def]
    victim, me = world.account(), world.account()
    async with running_app(world.app(sync_address_proof_seconds=1.5)) as service:
        api = world.caller(service, me.user)
        # my own logins (they work), but someone else's address: the proof lands in the victim's INBOX
        body = world.connect_body(me)
        body["address"] = victim.address
        body["imap"]["username"] = body["smtp"]["username"] = me.address
        refused = await api.put("/v1/mail-sync", json=body)
        assert refused.status_code == 422, refused.text
        problem = refused.json()
        assert (
            problem["type"].endswith("/mailbox-address-unproven")
            and problem["kind"] == "address_unproven"
        )
        assert "INBOX" in problem["detail"] and "user names" in problem["fix"]
        assert (await api.get("/v1/mail-sync")).status_code == 404
        assert await world.sql("SELECT id FROM sync.mailbox") == []
    assert await inbox_with_proof(world, me) == []


async def test_one_address_is_synced_by_one_mailbox_per_company(world) -> None:  # type: ignore[no-untyped-def]
    shared = world.account()
    colleague = make_identity("salesperson", company_id=world.company_id)
    elsewhere = make_identity("salesperson", company_id=uuid.uuid4())
    async with running_app(world.app()) as service:
        assert (
            await world.caller(service, shared.user).put(
                "/v1/mail-sync", json=world.connect_body(shared)
            )
        ).status_code == 200
        # a colleague who knows the same logins may not sync the same address a second time
        taken = await world.caller(service, colleague).put(
            "/v1/mail-sync", json=world.connect_body(shared)
        )
        assert taken.status_code == 409, taken.text
        assert (
            taken.json()["type"].endswith("/address-synced-by-another-user") and taken.json()["fix"]
        )
        # another company is another tenant
        assert (
            await world.caller(service, elsewhere).put(
                "/v1/mail-sync", json=world.connect_body(shared)
            )
        ).status_code == 200
    rows = await world.sql(
        "SELECT company_id FROM sync.mailbox WHERE address = :a", {"a": shared.address}
    )
    assert sorted(str(r[0]) for r in rows) == sorted(
        [str(world.company_id), str(elsewhere.company_id)]
    )
    # the database holds the rule too, whatever the path
    duplicate = (
        "INSERT INTO sync.mailbox (id, company_id, user_id, address, provider, smtp_use, status, imap_host, "
        "imap_port, imap_tls, imap_username, smtp_host, smtp_port, smtp_tls, smtp_username, connected_at, "
        "address_proven_at) SELECT gen_random_uuid(), company_id, gen_random_uuid(), address, provider, "
        "smtp_use, status, imap_host, imap_port, imap_tls, imap_username, smtp_host, smtp_port, smtp_tls, "
        "smtp_username, connected_at, now() FROM sync.mailbox WHERE company_id = :c"
    )
    try:
        await world.sql_write(duplicate, {"c": world.company_id})
        raise AssertionError("a second mailbox of the company synced the same address")
    except Exception as exc:
        assert "uq_mailbox_address_connected" in str(exc)
