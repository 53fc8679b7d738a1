"""Replicas share mailboxes through leases; a killed process loses nothing and duplicates nothing (R26)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import asyncpg
import pytest

from leadline_kit.db import asyncpg_dsn
from leadline_kit.infra import ChildProcess
from leadline_kit.testing.clients import running_app
from leadline_sync.mailbox.states import SyncMode
from leadline_sync.sync.scheduler import fair_share

SERVICE_SCRIPT = """
import asyncio, sys
from leadline_kit.testing.clients import running_app
from leadline_kit.infra import ChildProcess
from leadline_sync.main import create_app

if sys.argv[1:] == ["--held"]:
    sys.stdin.readline()  # imported (seconds, 20 s and more on a loaded machine): start when the test says so

async def main():
    async with running_app(create_app()):
        await asyncio.Event().wait()

asyncio.run(main())
"""
# the historical sync (issue 20): 5,000 messages, killed three times
HISTORY = 5000
LEADS = [f"buyer{k}@customer{k}.example" for k in range(3)]
STORED = (
    "SELECT count(*) FROM sync.synced_message"  # lead mail stored (and its event in the outbox)
)


async def held_live(  # type: ignore[no-untyped-def]
    world, addresses: set[str], replicas: set[str], timeout: float
) -> dict[str, str]:
    """Waits until every mailbox is held live by one of ``replicas``; the holder of each."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = await world.sql("SELECT address, lease_owner, sync_mode FROM sync.mailbox")
        owners = {
            address: owner
            for address, owner, mode in rows
            if mode == SyncMode.LIVE and owner in replicas
        }
        if set(owners) == addresses:
            return owners
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"every mailbox is held live by exactly one of {sorted(replicas)}: {sorted(rows)}"
            )
        await asyncio.sleep(0.1)


async def balanced(  # type: ignore[no-untyped-def]
    world, addresses: set[str], replicas: set[str], most: int, timeout: float
) -> dict[str, str]:
    """Waits until every mailbox is held live by one of ``replicas``, each holding ``most`` at most."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        owners = await held_live(
            world,
            addresses,
            replicas,
            timeout=max(deadline - asyncio.get_running_loop().time(), 0.1),
        )
        held = Counter(owners.values())
        if len(held) == len(replicas) and max(held.values()) <= most:
            return owners
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the replicas share the mailboxes evenly: {held}")
        await asyncio.sleep(0.1)


def start_service(world, replica: str, held: bool = False, **extra: str) -> ChildProcess:  # type: ignore[no-untyped-def]
    """A sync replica in its own process; ``held``: it imports, then waits for its release."""
    settings = world.settings()
    env = dict(
        DATABASE_URL=world.database_url,
        NATS_URL=world.nats_url,
        LEADLINE_IDENTITY_SECRET="sync-test-identity-secret",
        LEADLINE_ENVIRONMENT="test",
        LEADLINE_SYNC_ALLOW_NETWORKS="127.0.0.0/8",
        LEADLINE_SYNC_CA_FILE=world.ca_file,
        LEADLINE_CONSUMER_PREFIX=settings.consumer_prefix,
        # the durables the world's apps made start there: another start would be refused ("deliver policy can
        # not be updated") and the replica's consumers of leads and slots stop
        LEADLINE_CONSUMER_DELIVER_SINCE=settings.consumer_deliver_since.isoformat(),
        LEADLINE_SYNC_REPLICA=replica,
        LEADLINE_SYNC_LEASE_SECONDS="3",
        LEADLINE_SYNC_SCHEDULE_INTERVAL="0.2",
        LEADLINE_SYNC_BATCH_SIZE="50",
        # as the world's in-process apps: a mailbox whose session failed under load is retried within a second
        LEADLINE_SYNC_RETRY_BASE_SECONDS="0.3",
        LEADLINE_SYNC_RETRY_MAX_SECONDS="1",
        LEADLINE_LOG_LEVEL="WARNING",
        # a parser process: it must die with its SIGKILLed service (test_killed_three_times_mid_historical_sync...)
        LEADLINE_SYNC_PARSE_PROCESSES="1",
        **extra,
    )
    return ChildProcess(
        ["-c", SERVICE_SCRIPT, *(["--held"] if held else [])], env=env, held=held
    ).start()


def parser_processes(pid: int) -> list[int]:
    """The parser processes (sync/parse_worker.py) among the children of ``pid``."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            if b"leadline_sync.sync.parse_worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    return found


async def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Every process of ``pids`` has exited (a zombie counts as gone: only its entry is left)."""

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = asyncio.get_running_loop().time() + timeout
    while any(alive(pid) for pid in pids):
        assert asyncio.get_running_loop().time() < deadline, (
            f"parser processes outlived their service: {pids}"
        )
        await asyncio.sleep(0.05)


def history(me: str, tag: str) -> tuple[dict[str, list[bytes]], dict[str, str]]:
    """The kill test's mailbox, oldest first: ``HISTORY`` small messages (their size is not what a kill
    tests), 60% in INBOX and 40% in Sent, each with one of ``LEADS`` but every 25th with a stranger.
    (The raw messages of each folder, the lead address of each lead mail by its Message-ID.)"""
    folders: dict[str, list[bytes]] = {"INBOX": [], "Sent": []}
    lead_of: dict[str, str] = {}
    oldest = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(HISTORY):
        sent = i % 5 in (1, 3)
        other = f"stranger{i}@else.example" if i % 25 == 0 else LEADS[i % len(LEADS)]
        message_id = f"<history-{i}.{tag}@acme.example>"
        raw = (
            f"From: {me if sent else other}\r\nTo: {other if sent else me}\r\nSubject: deal {i}\r\n"
            f"Date: {format_datetime(oldest + timedelta(minutes=7 * i))}\r\nMessage-ID: {message_id}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSome words about the deal.\r\n"
        )
        folders["Sent" if sent else "INBOX"].append(raw.encode())
        if i % 25:
            lead_of[message_id] = other
    return folders, lead_of


async def stored_reaches(conn: asyncpg.Connection, count: int, timeout: float) -> int:
    """Waits until at least ``count`` lead mails are stored, looking every 20 ms; how many are."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (stored := await conn.fetchval(STORED)) < count:
        assert asyncio.get_running_loop().time() < deadline, (
            f"{stored} lead mails stored, waited for {count}"
        )
        await asyncio.sleep(0.02)
    return int(stored)


def test_mailboxes_are_shared_in_proportion_to_the_capacities_of_the_replicas_alive() -> None:
    assert fair_share(3000, 1500, 4500) == 1000  # three alike: a third each
    assert fair_share(3000, 1500, 3000) == 1500  # one died: a half each
    assert (
        fair_share(30, 15, 45) == 10 and fair_share(31, 15, 45) == 11
    )  # rounded up: none is left over
    assert fair_share(6, 2, 8) == 2 and fair_share(6, 6, 8) == 5  # a smaller replica takes less
    assert (
        fair_share(10, 2, 2) == 2
    )  # more than all can hold: each holds all it can, the rest rotate


@pytest.mark.slow
async def test_killed_three_times_mid_historical_sync_loses_and_duplicates_nothing(  # type: ignore[no-untyped-def]
    world, leads
) -> None:
    me = world.account()
    folders, lead_of = history(me.address, uuid.uuid4().hex[:10])
    for folder, raws in folders.items():
        world.dovecot.fill(me.address, folder, raws)
    total = len(lead_of)
    # killed at three random points spread over the history: once a random share of the lead mail in each band
    # is stored (a share, not a count of messages: the victim cannot finish before it is seen)
    kill_at = [int(total * random.uniform(low, low + 0.1)) for low in (0.1, 0.4, 0.7)]
    async with leads() as lead_service:
        # connect through an app that stops at once; the killed processes do the historical sync
        async with running_app(
            world.app(sync_max_mailboxes=1, sync_schedule_interval=60)
        ) as service:
            admin = world.identity("administrator")
            made = {lead: (await lead_service.create_lead(admin, lead))["id"] for lead in LEADS}
            await world.wait_for_sql(
                "SELECT count(*) FROM sync.lead_address", check=lambda v: v == len(LEADS)
            )
            api = world.caller(service, me.user)
            assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        conn = await asyncpg.connect(asyncpg_dsn(world.database_url))
        # newest first, in windows of 300 UIDs per folder and pass: kills land in every kind of step
        window = {"LEADLINE_SYNC_HISTORY_WINDOW": "300"}
        # the next replica imports while the current one syncs: each is released once the last was killed
        spare = start_service(world, "replica-0", held=True, **window)
        try:
            for attempt, threshold in enumerate(kill_at, 1):
                process, spare = (
                    spare,
                    start_service(world, f"replica-{attempt}", held=True, **window),
                )
                process.release()
                try:
                    await stored_reaches(conn, threshold, timeout=120)
                finally:
                    parsers = parser_processes(process.pid)
                    process.kill()
                stored = await conn.fetchval(STORED)
                assert threshold <= stored < total, (
                    f"kill {attempt} landed mid-history: {stored} of {total} stored"
                )
                assert parsers, "the service parsed in a parser process"
                await wait_gone(parsers)
            spare.release()  # the survivor
            await stored_reaches(conn, total, timeout=120)
            await world.wait_for_sql(
                "SELECT count(*) FROM sync.outbox", check=lambda v: v == 0, timeout=30
            )
            await world.wait_for_sql(
                "SELECT count(*) FROM sync.mailbox WHERE history_completed_at IS NOT NULL"
            )
        finally:
            spare.stop()
            await conn.close()
        timeline = await lead_service.wait_timeline(world.company_id, total, timeout=60)
    assert len(timeline) == total, "every lead mail on a timeline once"
    assert {(str(row.lead_id), row.message_id.strip("<>")) for row in timeline} == {
        (made[lead], message_id.strip("<>")) for message_id, lead in lead_of.items()
    }, "each on its lead's timeline, and nothing else"
    assert all(row[2] == 1 for row in timeline), "each from one source"
    events = await world.synced(at_least=total, timeout=60)
    counts = Counter(e.payload.message_id.strip("<>") for e in events)
    assert set(counts) == {message_id.strip("<>") for message_id in lead_of}, (
        "every lead mail was published"
    )
    assert max(counts.values()) == 1, "no message was published twice"


@pytest.mark.slow
async def test_two_replicas_never_sync_one_mailbox_at_once(world) -> None:  # type: ignore[no-untyped-def]
    lead = "ivy@customer.example"
    accounts = [world.account() for _ in range(6)]
    for account in accounts:
        await world.append(
            account,
            "INBOX",
            *(world.message(sender=lead, to=[account.address], subject=f"m{i}") for i in range(5)),
        )
    # A holds 2 live and serves the rest in turns (1 rotation slot); B holds up to 6 live (4 rotation slots)
    first = world.app(sync_replica="replica-a", sync_max_mailboxes=3, sync_lease_seconds=3.0)
    second = world.app(sync_replica="replica-b", sync_max_mailboxes=10, sync_lease_seconds=3.0)
    scheduler_a = None
    overlaps: list[set[uuid.UUID]] = []
    seen_b: set[uuid.UUID] = set()
    async with running_app(first) as service_a:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        for account in accounts:
            api = world.caller(service_a, account.user)
            assert (
                await api.put("/v1/mail-sync", json=world.connect_body(account))
            ).status_code == 200
        scheduler_a = first.state.runtime.context.scheduler
        await world.wait_for_sql(
            "SELECT count(DISTINCT lease_owner) FROM sync.mailbox WHERE lease_owner = 'replica-a'",
            check=lambda v: v == 1,
        )
        async with running_app(second):
            scheduler_b = second.state.runtime.context.scheduler
            deadline = asyncio.get_running_loop().time() + 20
            while (
                asyncio.get_running_loop().time() < deadline
                and len(scheduler_b.held(SyncMode.LIVE)) < 4
            ):
                overlaps.append(scheduler_a.mailboxes & scheduler_b.mailboxes)
                await asyncio.sleep(0.05)
            held_a = set(scheduler_a.held(SyncMode.LIVE))
            assert len(held_a) == 2 and len(scheduler_b.held(SyncMode.LIVE)) == 4

            # replica A dies: no clean shutdown, its leases simply stop being renewed
            async def die_silently() -> None:
                return None

            scheduler_a.release_all = die_silently
            for task in first.state.runtime.tasks:
                if task.get_name() == "sync-scheduler":
                    task.cancel()
            deadline = asyncio.get_running_loop().time() + 20
            while (
                asyncio.get_running_loop().time() < deadline
                and len(scheduler_b.held(SyncMode.LIVE)) < 6
            ):
                overlaps.append(scheduler_a.mailboxes & scheduler_b.mailboxes)
                seen_b |= scheduler_b.mailboxes
                await asyncio.sleep(0.05)
            assert held_a <= scheduler_b.mailboxes, "the dead replica's mailboxes were picked up"
            events = await world.synced(at_least=30, timeout=30)
    assert not any(overlaps), "two replicas held one mailbox at once"
    counts = Counter(e.payload.message_id for e in events)
    assert len(counts) == 30 and max(counts.values()) == 1


@pytest.mark.slow
async def test_three_replicas_share_mailboxes_and_take_over_from_a_killed_one(world) -> None:  # type: ignore[no-untyped-def]
    lead = "pia@customer.example"
    accounts = [world.account() for _ in range(30)]
    for account in accounts:
        await world.append(
            account, "INBOX", world.message(sender=lead, to=[account.address], subject="before")
        )
    # connect through an app that syncs nothing itself (it holds one mailbox at most, and stops at once)
    async with running_app(world.app(sync_max_mailboxes=1, sync_schedule_interval=60)) as service:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        for account in accounts:
            api = world.caller(service, account.user)
            assert (
                await api.put("/v1/mail-sync", json=world.connect_body(account))
            ).status_code == 200
    names = ["replica-a", "replica-b", "replica-c"]
    # each may hold half live (and one in turns): the mailboxes are spread evenly (10 each, 11 at most), and the
    # two left after a kill can hold them all live, each taking its part
    processes = {
        name: start_service(
            world, name, LEADLINE_SYNC_MAX_MAILBOXES="16", LEADLINE_SYNC_ROTATION_SLOTS="1"
        )
        for name in names
    }
    try:
        # (a process takes seconds to start on a loaded machine: the clock that matters starts at the kill)
        await world.wait_for_sql(
            "SELECT count(*) FROM sync.synced_message", check=lambda v: v == 30, timeout=120
        )
        # The last message may come from a rotation pass (a replica that started first serves in turns what the
        # later ones have not claimed yet); that mailbox is live on a replica a tick after the pass ends.
        owners = await balanced(
            world, {a.address for a in accounts}, set(names), most=11, timeout=30
        )
        held = Counter(owners.values())
        victim = held.most_common(1)[0][0]
        orphans = [a for a in accounts if owners[a.address] == victim]
        processes[victim].kill()
        killed_at = asyncio.get_running_loop().time()
        # mail that arrives while nobody holds these mailboxes is not missed
        for account in orphans:
            await world.append(
                account,
                "INBOX",
                world.message(sender=lead, to=[account.address], subject="during the takeover"),
            )
        await world.wait_for_sql(
            "SELECT count(*) FROM sync.synced_message",
            check=lambda v: v == 30 + len(orphans),
            timeout=30,
        )
        survivors = set(names) - {victim}
        left = 30 - (asyncio.get_running_loop().time() - killed_at)
        after = Counter(
            (
                await held_live(
                    world, {a.address for a in accounts}, survivors, timeout=max(left, 0.1)
                )
            ).values()
        )
        assert asyncio.get_running_loop().time() - killed_at < 30
        assert all(after[name] > held[name] for name in survivors), (
            f"both survivors took over: {held} -> {after}"
        )
    finally:
        for process in processes.values():
            process.stop()
    events = await world.synced(at_least=30 + len(orphans), timeout=30)
    counts = Counter(e.payload.message_id for e in events)
    assert len(counts) == 30 + len(orphans), "every message arrived"
    assert max(counts.values()) == 1, "no message was published twice"
