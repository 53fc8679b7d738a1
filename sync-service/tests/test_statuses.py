"""Statuses, error log, password updates, disconnect, the mailbox limit and giving up after 48 h (R8–R11)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import make_msgid

from leadline_kit.identity import OPERATOR
from leadline_kit.testing.clients import make_identity, running_app


async def test_wrong_password_then_update_resumes_from_cursor(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    lead = "dora@customer.example"
    await world.append(
        me,
        "INBOX",
        *(world.message(sender=lead, to=[me.address], subject=f"before {i}") for i in range(3)),
    )
    async with running_app(world.app()) as service:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        await world.wait_history(api)
        assert len(await world.synced(at_least=3)) == 3

    # the user changes the password at the provider; the next connection fails
    new_password = "changed-" + me.password
    await asyncio.sleep(1.1)  # Dovecot notices a changed passwd-file by its mtime, in whole seconds
    world.dovecot.set_password(me.address, new_password)
    async with running_app(world.app()) as service:
        api = world.caller(service, me.user)
        body = await world.wait_status(api, "error")
        assert "password" in body["status_reason"].lower()
        errors = (await api.get("/v1/mail-sync/errors")).json()["items"]
        assert errors and errors[0]["kind"] == "auth_failed"
        assert "update the password" in errors[0]["fix"].lower()
        # a wrong new password is refused at once, with what failed
        refused = await api.put(
            "/v1/mail-sync", json=world.connect_body(me, password="still-wrong")
        )
        assert refused.status_code == 422
        assert refused.json()["server"] == "imap" and refused.json()["kind"] == "auth_failed"

        world.smtp.accounts.passwords[me.address] = new_password
        me.password = new_password
        updated = await api.put("/v1/mail-sync", json=world.connect_body(me, password=new_password))
        assert updated.status_code == 200, updated.text
        assert updated.json()["id"] == body["id"]
        await world.wait_status(api, "enabled")
        await world.append(
            me, "INBOX", world.message(sender=lead, to=[me.address], subject="after update")
        )
        events = await world.synced(at_least=4)
        assert sorted(e.payload.subject for e in events) == [
            "after update",
            "before 0",
            "before 1",
            "before 2",
        ]
        statuses = [
            e.payload.status for e in await world.events("mailbox.status_changed", at_least=4)
        ]
        assert statuses[-2:] == ["error", "enabled"]


async def test_disconnect_remove_history_then_reconnect_runs_new_history(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    lead = "erin@customer.example"
    await world.append(me, "INBOX", world.message(sender=lead, to=[me.address], subject="hello"))
    async with running_app(world.app()) as service:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        api = world.caller(service, me.user)
        first = (await api.put("/v1/mail-sync", json=world.connect_body(me))).json()
        await world.wait_history(api)
        response = await api.delete("/v1/mail-sync", params={"keep_history": "false"})
        assert response.status_code == 204
        assert (await api.get("/v1/mail-sync")).status_code == 404
        disconnected = await world.events("mailbox.disconnected", at_least=1)
        assert [(str(e.payload.mailbox_id), e.payload.keep_history) for e in disconnected] == [
            (first["id"], False)
        ]
        rows = await world.sql("SELECT credential_ciphertext IS NULL, slot FROM sync.mailbox")
        assert rows == [(True, "released")]

        second = (await api.put("/v1/mail-sync", json=world.connect_body(me))).json()
        assert second["id"] != first["id"]
        await world.wait_history(api)
        events = await world.synced(at_least=2)
        assert sorted(str(e.payload.mailbox_id) for e in events) == sorted(
            [first["id"], second["id"]]
        )


async def test_mailbox_limit_pending_until_a_slot_frees(world) -> None:  # type: ignore[no-untyped-def]
    first, second = world.account(), world.account()
    async with running_app(world.app()) as service:
        await world.set_company(["acme.example"], mailbox_limit=1)
        await asyncio.sleep(1.0)  # the quota service applies the limit from the same event
        api1, api2 = world.caller(service, first.user), world.caller(service, second.user)
        assert (await api1.put("/v1/mail-sync", json=world.connect_body(first))).status_code == 200
        await world.wait_status(api1, "enabled")
        assert (await api2.put("/v1/mail-sync", json=world.connect_body(second))).status_code == 200
        pending = await world.wait_status(api2, "pending")
        assert "limit" in pending["status_reason"]
        admin = world.caller(service, make_identity("administrator", company_id=world.company_id))
        listed = (await admin.get("/v1/mailboxes")).json()["items"]
        assert sorted(m["status"] for m in listed) == ["enabled", "pending"]
        assert (await api1.get("/v1/mailboxes")).status_code == 403
        # the first user disconnects: the pending mailbox becomes enabled by itself (R9)
        assert (await api1.delete("/v1/mail-sync")).status_code == 204
        await world.wait_status(api2, "enabled")


async def test_quota_service_down_is_an_error_retried_later(bare_world, quota) -> None:  # type: ignore[no-untyped-def]
    world = bare_world
    me = world.account()
    async with running_app(world.app()) as service:
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        body = await world.wait_status(api, "error")
        assert "mailbox limit" in body["status_reason"]
        errors = (await api.get("/v1/mail-sync/errors")).json()["items"]
        assert errors[0]["kind"] == "mailbox_limit_unavailable"
        async with quota():
            await world.wait_status(api, "enabled")


async def test_connection_failed_after_48_hours_of_failures(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    async with running_app(world.app()) as service:
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        await world.wait_status(api, "enabled")
    await asyncio.sleep(1.1)  # Dovecot notices a changed passwd-file by its mtime, in whole seconds
    world.dovecot.set_password(me.address, "changed-elsewhere")
    async with running_app(world.app()) as service:
        api = world.caller(service, me.user)
        await world.wait_status(api, "error")
        world.clock.advance(timedelta(hours=47))
        await asyncio.sleep(1.5)
        assert (await api.get("/v1/mail-sync")).json()["status"] == "error"
        world.clock.advance(timedelta(hours=2))
        body = await world.wait_status(api, "connection_failed")
        assert body["status_reason"]
        await world.wait_for_sql("SELECT slot FROM sync.mailbox", check=lambda v: v == "released")
        attempts = (await world.sql("SELECT failures FROM sync.mailbox"))[0][0]
        world.clock.advance(timedelta(hours=10))
        await asyncio.sleep(1.0)
        assert (await world.sql("SELECT failures FROM sync.mailbox"))[0][0] == attempts, (
            "retries stopped"
        )
        admin = world.caller(service, make_identity("administrator", company_id=world.company_id))
        listed = (await admin.get("/v1/mailboxes")).json()["items"]
        assert listed[0]["counts_for_billing"] is False
        # new settings start it again: a slot is claimed anew and sync resumes
        world.smtp.accounts.passwords[me.address] = "changed-elsewhere"
        response = await api.put(
            "/v1/mail-sync", json=world.connect_body(me, password="changed-elsewhere")
        )
        assert response.status_code == 200 and response.json()["id"] == body["id"]
        await world.wait_status(api, "enabled")


async def test_plan_limit_pauses_sync_without_losing_mail(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    lead = "jack@customer.example"
    response = await world.caller(world.quota_client, OPERATOR).put(
        f"/v1/operator/quotas/{world.company_id}/plan", json={"plan": "legacy_free"}
    )
    assert response.status_code == 200, response.text
    ids = [make_msgid(domain="customer.example") for _ in range(130)]
    await world.append(
        me,
        "INBOX",
        *(
            world.message(sender=lead, to=[me.address], subject=f"m{i:03d}", message_id=ids[i])
            for i in range(130)
        ),
    )
    async with running_app(world.app()) as service:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        events = await world.synced(at_least=100)
        # the history is read newest first: the newest 100 are stored
        assert sorted(e.payload.subject for e in events) == [f"m{i:03d}" for i in range(30, 130)]
        body = (await api.get("/v1/mail-sync")).json()
        assert body["status"] == "enabled" and "daily limit" in body["status_reason"]
        assert body["history_completed_at"] is None
        errors = (await api.get("/v1/mail-sync/errors")).json()["items"]
        assert errors[0]["kind"] == "plan_limit"
        cursor = await world.sql(
            "SELECT history_floor FROM sync.folder_cursor WHERE folder = 'inbox'"
        )
        assert cursor[0][0] == 31, "the history stops above the first mail not stored"
        # "why is this mail not on the timeline?" names the plan limit (issue 25) for mail below the floor
        answer = (await api.get("/v1/mail-sync/messages", params={"message_id": ids[20]})).json()[
            "places"
        ]
        assert [(p["outcome"], p["rule"], p["uid"]) for p in answer] == [
            ("not_examined_yet", "R14", 21)
        ]
        assert "daily limit" in answer[0]["explanation"]
