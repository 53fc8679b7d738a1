"""Logins are paced, and a server that refuses more connections is backed off without an error status."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from leadline_kit.infra import DovecotServer
from leadline_kit.testing.clients import running_app
from leadline_mail.imap import ImapClient
from leadline_mail.net import MailConnectionError
from leadline_sync.sync.engine import QUIET_RECONNECT
from leadline_sync.sync.pacing import LoginGate

from .conftest import DroppingProxy, SmtpServer, smtp_delivering_to


def test_a_dropped_session_reconnects_after_two_four_then_six_seconds_jittered() -> None:
    # the session loop passes the drops in a row less one (0 after a long session: its first pause)
    assert [QUIET_RECONNECT.seconds(drops - 1, jitter=1.0) for drops in range(4)] == [
        2.0,
        2.0,
        4.0,
        6.0,
    ]
    assert all(1.0 <= QUIET_RECONNECT.seconds(0) <= 2.0 for _ in range(50))


async def test_the_gate_bounds_logins_in_flight_and_pauses_a_refusing_host() -> None:
    gate = LoginGate(2, base_seconds=0.4, max_seconds=1.0)
    inside = peak = 0

    async def login(host: str) -> None:
        nonlocal inside, peak
        async with gate.slot(host):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    await asyncio.gather(*(login("imap.example:993") for _ in range(10)))
    assert peak == 2
    loop = asyncio.get_running_loop()
    waits = gate.refused("imap.example:993", 1)
    assert 0.2 <= waits <= 0.4
    # orders of timers, not elapsed times under 0.15 s (a loaded machine can hold a loop up longer than that)
    started = loop.time()
    refusing = asyncio.create_task(login("imap.example:993"))
    await login("other.example:993")
    assert not refusing.done(), "other hosts do not wait the refusing host's pause"
    await refusing
    assert loop.time() - started >= 0.19, "the refusing host waits its pause"
    # paused again (0.4-0.8 s: its pause was over, and a login after it proved nothing of succeeded())
    gate.refused("imap.example:993", 2)
    gate.succeeded("imap.example:993")
    shorter_than_the_pause = asyncio.create_task(asyncio.sleep(0.2))
    await login("imap.example:993")
    assert not shorter_than_the_pause.done(), "a good login ends the pause"
    shorter_than_the_pause.cancel()


@pytest.fixture(scope="module")
def crowded_dovecot(
    tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DovecotServer]:
    """A Dovecot that lets a user hold two connections from one address."""
    cert = tls_ca.issue_cert("localhost", "127.0.0.1")
    server = DovecotServer(
        Path(tmp_path_factory.mktemp("crowded")),
        cert.cert_chain_pems[0].bytes() + tls_ca.cert_pem.bytes(),
        cert.private_key_pem.bytes(),
        max_userip_connections=2,
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def crowded_smtp(tls_ca: trustme.CA, crowded_dovecot: DovecotServer) -> Iterator[SmtpServer]:
    """Delivers into the crowded Dovecot: connecting proves the address through it."""
    with smtp_delivering_to(tls_ca, crowded_dovecot) as server:
        yield server


@pytest.fixture
async def crowded_proxy(crowded_dovecot: DovecotServer) -> AsyncIterator[DroppingProxy]:
    proxy = await DroppingProxy(crowded_dovecot.port).start()
    yield proxy
    await proxy.stop()


def refusals(dovecot: DovecotServer) -> int:
    return (
        (dovecot.base_dir / "dovecot.log")
        .read_text()
        .count("Maximum number of connections from user+IP exceeded")
    )


async def test_too_many_connections_backs_off_without_an_error(  # type: ignore[no-untyped-def]
    world,
    crowded_dovecot: DovecotServer,
    crowded_smtp: SmtpServer,
    crowded_proxy: DroppingProxy,
) -> None:
    world = dataclasses.replace(world, dovecot=crowded_dovecot, smtp=crowded_smtp)
    me = world.account()
    lead = "olga@customer.example"
    async with running_app(
        world.app(sync_poll_seconds=60, sync_retry_base_seconds=0.3, sync_retry_max_seconds=1.0)
    ) as service:
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        api = world.caller(service, me.user)
        body = world.connect_body(me)
        body["imap"]["port"] = crowded_proxy.port
        assert (await api.put("/v1/mail-sync", json=body)).status_code == 200
        await world.wait_history(api)
        phone = await world.imap(me)
        assert crowded_proxy.cut() >= 1
        # the user's laptop takes the place the sync held: the sync's next login is one too many
        laptop: ImapClient | None = None
        for _ in range(50):
            try:
                laptop = await world.imap(me)
                break
            except MailConnectionError as refused:
                assert refused.kind == "too_many_connections"
                await asyncio.sleep(0.05)
        assert laptop is not None
        await world.wait_for_sql(
            "SELECT count(*) FROM sync.mailbox_error WHERE kind = 'too_many_connections'",
            check=lambda v: v == 1,
            timeout=15,
        )
        shown = (await api.get("/v1/mail-sync")).json()
        assert shown["status"] == "enabled" and "no more connections" in shown["status_reason"]
        before = refusals(crowded_dovecot)
        await asyncio.sleep(3)
        retried = refusals(crowded_dovecot) - before
        assert 2 <= retried <= 10, f"backs off but keeps trying: {retried} refused logins in 3 s"
        await phone.append(
            "INBOX", world.message(sender=lead, to=[me.address], subject="while refused")
        )
        await phone.logout()
        events = await world.synced(at_least=1, timeout=15)
        assert [e.payload.subject for e in events] == ["while refused"]
        await laptop.logout()
        shown = (await api.get("/v1/mail-sync")).json()
        assert shown["status"] == "enabled" and shown["status_reason"] == ""
        errors = (await api.get("/v1/mail-sync/errors")).json()["items"]
        assert [e["kind"] for e in errors] == ["too_many_connections"], (
            "one entry, however many retries"
        )
        statuses = [e.payload.status for e in await world.events("mailbox.status_changed")]
        assert "error" not in statuses
