"""No mail lost to a lead the sync service hears of late (issue 25), with the real lead service.

The sync service matches mail against its copy of the leads, built from
``lead.created`` events.  These tests hold that copy back (the directory
consumer is stopped) while a historical sync runs, and check the outcome on
the lead service's timeline: every lead mail once, nothing else.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import make_msgid
from typing import Any

from fastapi import FastAPI

from leadline_kit.identity import Identity
from leadline_kit.service import Runtime, stop_tasks
from leadline_kit.testing.clients import running_app
from leadline_sync.mailbox.consumers import consumers

LONG_AGO = datetime(2024, 3, 1, tzinfo=UTC)


async def hold_directory(app: FastAPI) -> None:
    """Stop the sync service's directory consumer: lead events wait on the stream."""
    runtime: Runtime = app.state.runtime
    held = [task for task in runtime.tasks if task.get_name().endswith("-directory")]
    assert held, "no directory consumer running"
    await stop_tasks(held)
    # its last pull request (1 s) must expire before events come, or they would wait out the ack wait
    await asyncio.sleep(1.2)


def release_directory(app: FastAPI) -> None:
    runtime: Runtime = app.state.runtime
    directory = next(c for c in consumers(runtime) if c.durable.endswith("-directory"))
    runtime.spawn(directory.run(), f"sync-consumer-{directory.durable}")


def lead_mail(world: Any, me: Any, lead: str, date: datetime, tag: str) -> tuple[str, bytes, bytes]:
    """An answer in Sent and a message in INBOX with ``lead``; returns the INBOX one's Message-ID first."""
    inbox_id, sent_id = make_msgid(domain="customer.example"), make_msgid(domain="acme.example")
    return (
        f"{inbox_id} {sent_id}",
        world.message(
            sender=lead, to=[me.address], subject=f"{tag} in", date=date, message_id=inbox_id
        ),
        world.message(
            sender=me.address, to=[lead], subject=f"{tag} out", date=date, message_id=sent_id
        ),
    )


async def test_history_waits_until_the_leads_of_connect_time_arrived(world, leads) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    admin = world.identity("administrator")
    addresses = [f"buyer{i}@customer{i}.example" for i in range(3)]
    expected: set[str] = set()
    async with leads() as lead_service:
        app = world.app(sync_batch_size=4, sync_directory_wait_seconds=60)
        async with running_app(app) as service:
            await hold_directory(app)
            for i, address in enumerate(addresses):
                ids, inbound, outbound = lead_mail(
                    world, me, address, LONG_AGO + timedelta(days=i), f"lead {i}"
                )
                expected.update(ids.split())
                await world.append(
                    me,
                    "INBOX",
                    inbound,
                    *(
                        world.message(sender=f"stranger{i}{j}@else.example", to=[me.address])
                        for j in range(3)
                    ),
                )
                await world.append(me, "Sent", outbound)
            made = {(await lead_service.create_lead(admin, address))["id"] for address in addresses}
            api = world.caller(service, me.user)
            assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200

            body = await world.wait_reason(api, "Waiting for the company's leads (0 of 3)")
            assert body["history_completed_at"] is None
            assert await world.sql("SELECT count(*) FROM sync.synced_message") == [(0,)]

            release_directory(app)
            await world.wait_history(api)
            timeline = await lead_service.wait_timeline(world.company_id, len(expected))
            assert {row.message_id.strip("<>") for row in timeline} == {
                m.strip("<>") for m in expected
            }
            assert {str(row.lead_id) for row in timeline} == made
            assert all(row[2] == 1 for row in timeline), "each message once, from one source"
            body = (await api.get("/v1/mail-sync")).json()
            assert body["status"] == "enabled" and body["status_reason"] == ""
            assert (await api.get("/v1/mail-sync/errors")).json()["items"] == []


async def test_mail_of_leads_that_arrive_late_is_found_again(world, leads) -> None:  # type: ignore[no-untyped-def]
    """The wait times out; leads arrive after the history: their mail is found again (R5 bounds it by date)."""
    me = world.account()
    admin = world.identity("administrator")
    early, later = "early@customer.example", "later@prospect.example"
    async with leads() as lead_service:
        app = world.app(sync_batch_size=4, sync_directory_wait_seconds=1.0)
        async with running_app(app) as service:
            await hold_directory(app)
            early_ids, inbound, outbound = lead_mail(world, me, early, LONG_AGO, "early")
            stranger_id = make_msgid(domain="else.example")
            await world.append(
                me,
                "INBOX",
                inbound,
                world.message(sender="x@else.example", to=[me.address], message_id=stranger_id),
            )
            await world.append(me, "Sent", outbound)
            early_lead = await lead_service.create_lead(admin, early)
            api = world.caller(service, me.user)
            assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
            await world.wait_history(api)
            assert await world.sql("SELECT count(*) FROM sync.synced_message") == [(0,)]
            errors = (await api.get("/v1/mail-sync/errors")).json()["items"]
            assert [e["kind"] for e in errors] == ["leads_behind"]
            assert "0 of 1" in errors[0]["message"] and errors[0]["fix"]

            # R5 for a lead created after connect: mail dated from its creation on, also mail that arrived
            # before the lead existed (a sender's clock ahead, delayed delivery); mail dated before, not
            now = datetime.now(UTC)
            before_id, after_id = (
                make_msgid(domain="prospect.example"),
                make_msgid(domain="prospect.example"),
            )
            await world.append(
                me,
                "INBOX",
                world.message(
                    sender=later,
                    to=[me.address],
                    subject="dated before the lead",
                    date=now - timedelta(minutes=1),
                    message_id=before_id,
                ),
                world.message(
                    sender=later,
                    to=[me.address],
                    subject="dated after the lead",
                    date=now + timedelta(minutes=2),
                    message_id=after_id,
                ),
            )
            later_lead = await lead_service.create_lead(admin, later)
            assert datetime.fromisoformat(later_lead["created_at"]) < now + timedelta(minutes=2)
            await world.wait_for_sql(
                "SELECT count(*) FROM sync.folder_cursor WHERE folder = 'inbox' AND last_uid >= 4"
            )  # examined while the lead was unknown

            release_directory(app)
            timeline = await lead_service.wait_timeline(world.company_id, 3)
            # and live mail after the lead exists, dated on both sides of its creation
            live_before, live_after = (
                make_msgid(domain="prospect.example"),
                make_msgid(domain="prospect.example"),
            )
            created = datetime.fromisoformat(later_lead["created_at"])
            await world.append(
                me,
                "INBOX",
                world.message(
                    sender=later,
                    to=[me.address],
                    subject="late, dated before",
                    date=created - timedelta(seconds=2),
                    message_id=live_before,
                ),
                world.message(
                    sender=later,
                    to=[me.address],
                    subject="late, dated after",
                    date=created + timedelta(seconds=1),
                    message_id=live_after,
                ),
            )
            timeline = await lead_service.wait_timeline(world.company_id, 4)
            keys = {(str(row.lead_id), row.message_id.strip("<>")) for row in timeline}
            assert keys == {(early_lead["id"], m.strip("<>")) for m in early_ids.split()} | {
                (later_lead["id"], after_id.strip("<>")),
                (later_lead["id"], live_after.strip("<>")),
            }
            assert all(row[2] == 1 for row in timeline)
            assert await world.sql("SELECT count(*) FROM sync.synced_message") == [(4,)]
            assert await world.sql("SELECT count(*) FROM sync.lead_recheck") == [(0,)]

            # "Why is this mail not on the timeline?" (issue 25): every answer names its rule
            blocked, blocked_id, folder_id = (
                "blocked@spam.example",
                make_msgid(domain="spam.example"),
                make_msgid(),
            )
            await lead_service.create_lead(admin, blocked)
            await world.wait_for_sql(
                "SELECT count(*) FROM sync.lead_address WHERE address = :a", {"a": blocked}
            )
            await world.publish_blocklist("domain", "spam.example")
            await world.append(
                me,
                "INBOX",
                world.message(
                    sender=blocked, to=[me.address], date=LONG_AGO, message_id=blocked_id
                ),
            )
            client = await world.imap(me)
            try:
                await client.create_folder("INBOX/Projects")
                await client.append(
                    "INBOX/Projects",
                    world.message(sender=early, to=[me.address], message_id=folder_id),
                )
            finally:
                await client.logout()
            # INBOX UIDs: 1-2 before connect, 3 the address proof (taken back), 4-7 above, 8 the blocklisted one
            await world.wait_for_sql(
                "SELECT last_uid FROM sync.folder_cursor WHERE folder = 'inbox'",
                check=lambda v: v >= 8,
            )
            runtime: Runtime = app.state.runtime
            await stop_tasks(
                [t for t in runtime.tasks if t.get_name() == "sync-scheduler"]
            )  # sync stops here
            unseen_id = make_msgid(domain="customer.example")
            await world.append(
                me, "INBOX", world.message(sender=early, to=[me.address], message_id=unseen_id)
            )

            async def why(message_id: str, caller: Any = api, **params: Any) -> Any:
                return await caller.get(
                    "/v1/mail-sync/messages", params={"message_id": message_id, **params}
                )

            async def place(message_id: str) -> dict[str, Any]:
                body = (await why(message_id)).json()
                assert len(body["places"]) == 1, body
                found: dict[str, Any] = body["places"][0]
                # what the sync examined is answered from its records; only the rest asks the server
                recorded = found["outcome"] not in (
                    "not_synced_folder",
                    "not_examined_yet",
                    "not_on_server",
                )
                assert body["server_searched"] is not recorded, body
                assert (found["examined_at"] is not None) is recorded, body
                return found

            on_timeline = await place(early_ids.split()[0])
            assert (on_timeline["outcome"], on_timeline["rule"], on_timeline["uid"]) == (
                "on_timeline",
                "R6",
                1,
            )
            assert [t["lead_id"] for t in on_timeline["timeline"]] == [
                early_lead["id"]
            ] and on_timeline["stored_at"]
            assert (await place(early_ids.split()[0].strip("<>")))["outcome"] == "on_timeline", (
                "brackets optional"
            )
            outcomes = {
                name: (p["outcome"], p["rule"], p["reason"], p["folder"])
                for name, p in [
                    ("stranger", await place(stranger_id)),
                    ("blocked", await place(blocked_id)),
                    ("dated before", await place(before_id)),
                    ("subfolder", await place(folder_id)),
                ]
            }
            assert outcomes == {
                "stranger": ("not_stored", "R6", "no_lead", "inbox"),
                "blocked": ("not_stored", "R6", "blocklisted", "inbox"),
                "dated before": ("not_stored", "R5", "before_lead", "inbox"),
                "subfolder": ("not_synced_folder", "R4", None, "INBOX/Projects"),
            }
            unseen = await place(unseen_id)
            assert (unseen["outcome"], unseen["rule"], unseen["uid"]) == (
                "not_examined_yet",
                "R28",
                9,
            )
            assert unseen["sync_position"]["last_uid"] == 8
            absent = (await why(make_msgid(domain="nowhere.example"))).json()
            assert absent["server_searched"] and [p["outcome"] for p in absent["places"]] == [
                "not_on_server"
            ]

            mailbox_id = (await api.get("/v1/mail-sync")).json()["id"]
            boss = world.caller(service, admin)
            assert (await place(stranger_id)) == (
                await why(stranger_id, boss, mailbox_id=mailbox_id)
            ).json()["places"][0]
            colleague = world.caller(service, world.identity("salesperson"))
            assert (await why(stranger_id, colleague, mailbox_id=mailbox_id)).status_code == 403
            stranger_company = Identity(
                company_id=uuid.uuid4(), user_id=uuid.uuid4(), role="administrator"
            )
            outsider = world.caller(service, stranger_company)
            assert (await why(stranger_id, outsider, mailbox_id=mailbox_id)).status_code == 404
            assert (await why(stranger_id, outsider)).status_code == 404
            for bad in (
                {},
                {"message_id": ""},
                {"message_id": f"{stranger_id}\r\nX: y"},
                {"message_id": "no id"},
            ):
                response = await api.get("/v1/mail-sync/messages", params=bad)
                assert response.status_code == 422, (bad, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")

            # R11: disabling sync with "remove" takes its mail off the timelines, and the answer says so
            assert (
                await api.delete("/v1/mail-sync", params={"keep_history": "false"})
            ).status_code == 204
            deadline = asyncio.get_running_loop().time() + 20
            while (
                await lead_service.timeline(world.company_id)
                and asyncio.get_running_loop().time() < deadline
            ):
                await asyncio.sleep(0.2)
            removed = await place(early_ids.split()[0])
            assert (removed["outcome"], removed["rule"]) == ("removed", "R11")
            unrecorded = (await why(unseen_id)).json()  # no login kept: the server is not asked
            assert [p["outcome"] for p in unrecorded["places"]] == ["server_not_searched"]
            assert not unrecorded["server_searched"]
