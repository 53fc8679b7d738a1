"""Sync-service test support on real parts: PostgreSQL, NATS JetStream, Dovecot, aiosmtpd.

``SyncWorld`` gives each test its own migrated database, company and users,
Dovecot mailboxes seeded by IMAP APPEND, an SMTP server with STARTTLS and
AUTH that delivers mail for Dovecot users into their INBOX (the address proof),
the sync app (and, when asked, the real quota service) in-process, and
a reader of the events the sync service published for the test's company.
Only the outside world is faked: DNS answers in the domain-check tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import text

from leadline_kit import bus
from leadline_kit.db import Database
from leadline_kit.identity import Identity
from leadline_kit.infra import DovecotServer, PostgresServer, free_port
from leadline_kit.testing.clients import as_caller, make_identity, running_app
from leadline_kit.testing.delivery import deliver_locally
from leadline_kit.testing.fixtures import migrated_database
from leadline_mail.imap import ImapClient, ImapSettings, connect_imap
from leadline_proto.events import (
    BlocklistAddedV1,
    BlocklistEntryPayload,
    CompanyPayload,
    CompanyUpdatedV1,
    EventBase,
    LeadCreatedV1,
    LeadPayload,
    parse_event,
)
from leadline_proto.requests import LeadDirectoryReply, LeadDirectoryRequest
from leadline_proto.subjects import RPC_LEAD_DIRECTORY, STREAM_NAME
from leadline_sync.config import Settings
from leadline_sync.main import create_app

SECRET = "sync-test-identity-secret"


class MovableClock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


def message(
    *,
    sender: str,
    to: list[str],
    subject: str = "Hello",
    body: str = "Hi there.\n",
    date: datetime | None = None,
    cc: list[str] | None = None,
    message_id: str | None = None,
    attachment: bytes | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = message_id or make_msgid(domain="test.example")
    msg.set_content(body)
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="offer.pdf")
    return msg.as_bytes()


class DroppingProxy:
    """A TCP proxy in front of a server whose connections the test can cut, as a flaky network does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> DroppingProxy:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self.links.append((writer, upstream_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(
            pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True
        )

    def cut(self) -> int:
        for client_side, server_side in self.links:
            client_side.transport.abort()
            server_side.transport.abort()
        cut, self.links = len(self.links), []
        return cut

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


class SmtpAccounts:
    """aiosmtpd authenticator: the accounts that may log in."""

    def __init__(self) -> None:
        self.passwords: dict[str, str] = {}

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            ok = self.passwords.get(auth_data.login.decode()) == auth_data.password.decode()
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)


@dataclass
class DeliveringHandler:
    """Mail to a Dovecot user lands in their INBOX (the address proof needs it); anything else is dropped."""

    dovecot: DovecotServer

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        deliver_locally(
            self.dovecot, envelope.rcpt_tos, envelope.original_content or envelope.content
        )
        return "250 OK"


@dataclass
class SmtpServer:
    port: int
    accounts: SmtpAccounts


@pytest.fixture(scope="session")
def smtp_server(tls_ca: trustme.CA, dovecot: DovecotServer) -> Iterator[SmtpServer]:
    with smtp_delivering_to(tls_ca, dovecot) as server:
        yield server


@contextlib.contextmanager
def smtp_delivering_to(tls_ca: trustme.CA, dovecot: DovecotServer) -> Iterator[SmtpServer]:
    """An SMTP server with STARTTLS and AUTH whose mail for ``dovecot``'s users lands in their INBOX."""
    cert = tls_ca.issue_cert("localhost", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    accounts = SmtpAccounts()
    port = free_port()
    controller = Controller(
        DeliveringHandler(dovecot),
        hostname="127.0.0.1",
        port=port,
        authenticator=accounts,
        auth_require_tls=True,
        tls_context=context,
        require_starttls=True,
    )
    controller.start()
    try:
        yield SmtpServer(port, accounts)
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def ca_file(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return str(path)


@dataclass
class MailAccount:
    address: str
    password: str
    user: Identity


@dataclass
class SyncWorld:
    postgres: PostgresServer
    dovecot: DovecotServer
    smtp: SmtpServer
    nats_url: str
    ca_file: str
    database_url: str
    js: JetStreamContext
    nc: Client
    company_id: uuid.UUID = field(default_factory=uuid.uuid4)
    clock: MovableClock = field(default_factory=MovableClock)
    consumer_prefix: str = field(default_factory=lambda: f"sync-test-{uuid.uuid4().hex[:10]}")
    # the world's consumers start at its creation, not at the session stream's first event (thousands by then)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(seconds=1))
    quota_client: httpx.AsyncClient | None = None  # the quota service's API, when it runs
    # the leads this world published as the lead service would (it answers RPC_LEAD_DIRECTORY for them)
    lead_ids: set[uuid.UUID] = field(default_factory=set)
    directory_responder: Subscription | None = None

    async def answer_lead_directory(self) -> None:
        """Answer the sync service's lead count for this company, as the lead service does for its leads."""

        async def on_request(msg: Msg) -> None:
            request = LeadDirectoryRequest.model_validate_json(msg.data)
            if request.company_id == self.company_id:
                await msg.respond(
                    LeadDirectoryReply(leads=len(self.lead_ids), as_of=datetime.now(UTC))
                    .model_dump_json()
                    .encode()
                )

        self.directory_responder = await self.nc.subscribe(RPC_LEAD_DIRECTORY, cb=on_request)

    async def stop_answering_lead_directory(self) -> None:
        """The real lead service answers from here on."""
        if self.directory_responder is not None:
            await self.directory_responder.unsubscribe()
            self.directory_responder = None

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            database_url=self.database_url,
            nats_url=self.nats_url,
            identity_secret=SECRET,
            environment="test",
            sync_allow_networks="127.0.0.0/8",
            sync_ca_file=self.ca_file,
            consumer_prefix=self.consumer_prefix,
            consumer_deliver_since=self.created_at,
            sync_poll_seconds=2.0,
            sync_schedule_interval=0.2,
            sync_lease_seconds=4.0,
            sync_retry_base_seconds=0.3,
            sync_retry_max_seconds=1.0,
            rpc_timeout_seconds=1.0,
            sync_imap_timeout=10.0,
            sync_parse_processes=0,  # inline: no parser processes to start per test app (test_messages has one)
        )
        values.update(overrides)
        return Settings(**values)

    def app(self, **overrides: Any) -> Any:
        return create_app(self.settings(**overrides), clock=self.clock)

    def account(self, role: str = "salesperson") -> MailAccount:
        name = f"u{uuid.uuid4().hex[:10]}"
        address = f"{name}@acme.example"
        password = f"pw-{uuid.uuid4().hex[:8]}"
        self.dovecot.add_user(address, password)
        self.smtp.accounts.passwords[address] = password
        return MailAccount(address, password, make_identity(role, company_id=self.company_id))

    def identity(self, role: str) -> Identity:
        """Another user of the test's company (an administrator creating leads, say)."""
        return make_identity(role, company_id=self.company_id)

    def connect_body(self, account: MailAccount, password: str | None = None) -> dict[str, Any]:
        pw = password or account.password
        return {
            "provider": "custom",
            "address": account.address,
            "password": pw,
            "imap": {"host": "127.0.0.1", "port": self.dovecot.port, "use_ssl": False},
            "smtp": {"host": "127.0.0.1", "port": self.smtp.port, "use_ssl": False},
        }

    def caller(self, client: httpx.AsyncClient, identity: Identity) -> httpx.AsyncClient:
        return as_caller(client, identity, SECRET)

    async def imap(self, account: MailAccount) -> ImapClient:
        return await connect_imap(
            ImapSettings(
                host="127.0.0.1",
                port=self.dovecot.tls_port,
                tls="implicit",
                username=account.address,
                password=account.password,
                cafile=self.ca_file,
                allow_networks=self.settings().allow_networks(),
            )
        )

    async def append(self, account: MailAccount, folder: str, *raws: bytes) -> None:
        client = await self.imap(account)
        try:
            for raw in raws:
                await client.append(folder, raw)
        finally:
            await client.logout()

    async def publish(self, *events: EventBase) -> None:
        for event in events:
            await self.js.publish(
                event.subject,
                event.model_dump_json().encode(),
                headers={"Nats-Msg-Id": str(event.event_id)},
            )

    message = staticmethod(message)

    async def publish_blocklist(self, kind: str, value: str) -> uuid.UUID:
        entry_id = uuid.uuid4()
        await self.publish(
            BlocklistAddedV1(
                company_id=self.company_id,
                payload=BlocklistEntryPayload(entry_id=entry_id, kind=kind, value=value),
            )
        )
        await self.wait_for_sql(
            "SELECT count(*) FROM sync.blocklist_entry WHERE entry_id = :id", {"id": entry_id}
        )
        return entry_id

    async def add_lead(self, *addresses: str, created_at: datetime | None = None) -> uuid.UUID:
        lead_id = uuid.uuid4()
        await self.publish(
            LeadCreatedV1(
                company_id=self.company_id,
                payload=LeadPayload(
                    lead_id=lead_id,
                    addresses=list(addresses),
                    created_at=created_at or self.clock(),
                ),
            )
        )
        self.lead_ids.add(lead_id)
        await self.wait_for_sql(
            "SELECT count(*) FROM sync.lead_address WHERE lead_id = :id", {"id": lead_id}
        )
        return lead_id

    async def set_company(
        self, domains: list[str], block_own_domains: bool = True, mailbox_limit: int | None = None
    ) -> None:
        await self.publish(
            CompanyUpdatedV1(
                company_id=self.company_id,
                payload=CompanyPayload(
                    name="Acme",
                    domains=domains,
                    block_own_domains=block_own_domains,
                    mailbox_limit=mailbox_limit,
                ),
            )
        )
        await self.wait_for_sql(
            "SELECT count(*) FROM sync.company WHERE company_id = :id", {"id": self.company_id}
        )

    async def sql(self, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
        database = Database(self.database_url, "sync", pool_size=1)
        try:
            async with database.session() as session:
                return list((await session.execute(text(statement), params or {})).all())
        finally:
            await database.dispose()

    async def sql_write(self, statement: str, params: dict[str, Any] | None = None) -> None:
        database = Database(self.database_url, "sync", pool_size=1)
        try:
            async with database.session() as session:
                await session.execute(text(statement), params or {})
        finally:
            await database.dispose()

    async def wait_for_sql(
        self,
        statement: str,
        params: dict[str, Any] | None = None,
        *,
        check: Callable[[Any], bool] = bool,
        timeout: float = 20.0,
    ) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        value: Any = None
        while asyncio.get_running_loop().time() < deadline:
            rows = await self.sql(statement, params)
            value = rows[0][0] if rows else None
            if check(value):
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {statement!r}: last value {value!r}")

    async def events(
        self, type_: str, *, at_least: int = 0, timeout: float = 20.0, settle: float = 0.5
    ) -> list[Any]:
        """Every event of ``type_`` published for this company so far (waits for ``at_least`` of them)."""
        subject = f"leadline.{type_}.v1"
        durable = f"reader-{uuid.uuid4().hex[:10]}"
        await self.js.add_consumer(
            STREAM_NAME,
            ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                filter_subject=subject,
                inactive_threshold=30.0,
            ),
        )
        subscription = await self.js.pull_subscribe_bind(durable, stream=STREAM_NAME)
        found: list[Any] = []
        deadline = asyncio.get_running_loop().time() + timeout
        quiet_until: float | None = None
        try:
            while True:
                now = asyncio.get_running_loop().time()
                try:
                    batch = await subscription.fetch(500, timeout=0.3)
                except (NatsTimeoutError, TimeoutError):
                    batch = []
                for msg in batch:
                    event = parse_event(msg.data)
                    if event.company_id == self.company_id:
                        found.append(event)
                if batch:
                    quiet_until = None
                    continue
                if len(found) >= at_least:
                    quiet_until = quiet_until or now + settle
                    if now >= quiet_until:
                        return found
                if now > deadline:
                    return found
        finally:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(STREAM_NAME, durable)

    async def synced(self, at_least: int = 0, timeout: float = 20.0) -> list[Any]:
        return await self.events("mail.synced", at_least=at_least, timeout=timeout)

    async def wait_status(
        self, client: httpx.AsyncClient, status: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        body: dict[str, Any] = {}
        while asyncio.get_running_loop().time() < deadline:
            response = await client.get("/v1/mail-sync")
            body = response.json()
            if response.status_code == 200 and body["status"] == status:
                return body
            await asyncio.sleep(0.1)
        raise AssertionError(f"mailbox never became {status}: {body}")

    async def wait_reason(
        self, client: httpx.AsyncClient, reason: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        body: dict[str, Any] = {}
        while asyncio.get_running_loop().time() < deadline:
            body = (await client.get("/v1/mail-sync")).json()
            if reason in body.get("status_reason", ""):
                return body
            await asyncio.sleep(0.1)
        raise AssertionError(f"the mailbox never said {reason!r}: {body}")

    async def wait_history(
        self, client: httpx.AsyncClient, timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        body: dict[str, Any] = {}
        while asyncio.get_running_loop().time() < deadline:
            body = (await client.get("/v1/mail-sync")).json()
            if body.get("history_completed_at"):
                return body
            await asyncio.sleep(0.1)
        raise AssertionError(f"historical sync never completed: {body}")


@pytest.fixture
async def bare_world(
    postgres: PostgresServer,
    dovecot: DovecotServer,
    smtp_server: SmtpServer,
    nats_url: str,
    ca_file: str,
) -> AsyncIterator[SyncWorld]:
    """A world without the quota service (nobody answers mailbox-limit claims)."""
    url = await migrated_database(postgres, "leadline_sync")
    nc, js = await bus.connect(nats_url, "sync-tests")
    await bus.ensure_stream(js)
    world = SyncWorld(
        postgres=postgres,
        dovecot=dovecot,
        smtp=smtp_server,
        nats_url=nats_url,
        ca_file=ca_file,
        database_url=url,
        js=js,
        nc=nc,
    )
    await world.answer_lead_directory()
    yield world
    await nc.close()


@pytest.fixture
async def world(
    bare_world: SyncWorld, postgres: PostgresServer, nats_url: str
) -> AsyncIterator[SyncWorld]:
    """A world with the real quota service answering mailbox-limit claims."""
    async with quota_service(postgres, nats_url) as client:
        bare_world.quota_client = client
        yield bare_world


@contextlib.asynccontextmanager
async def quota_service(
    postgres: PostgresServer, nats_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The real quota service, in-process, with a database and durable of its own."""
    from leadline_quota.config import Settings as QuotaSettings
    from leadline_quota.main import create_app as create_quota_app

    url = await migrated_database(postgres, "leadline_quota")
    app = create_quota_app(
        QuotaSettings(
            database_url=url,
            nats_url=nats_url,
            identity_secret=SECRET,
            environment="test",
            consumer_prefix=f"quota-for-sync-{uuid.uuid4().hex[:10]}",
        )
    )
    async with running_app(app) as client:
        yield client


@dataclass
class LeadService:
    """The real lead service (its API and database), to create leads and read timelines."""

    client: httpx.AsyncClient
    database_url: str

    async def create_lead(self, identity: Identity, *addresses: str) -> dict[str, Any]:
        response = await as_caller(self.client, identity, SECRET).post(
            "/v1/leads", json={"name": f"Lead {addresses[0]}", "addresses": list(addresses)}
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def timeline(self, company_id: uuid.UUID) -> list[Any]:
        """(lead id, Message-ID, number of sources) of every timeline event of the company."""
        database = Database(self.database_url, "lead", pool_size=1)
        try:
            async with database.session() as session:
                return list(
                    (
                        await session.execute(
                            text(
                                "SELECT e.lead_id, e.message_id, count(s.source) FROM lead.timeline_event e "
                                "JOIN lead.timeline_event_source s ON s.timeline_event_id = e.id "
                                "WHERE e.company_id = :company GROUP BY e.id ORDER BY e.id"
                            ),
                            {"company": company_id},
                        )
                    ).all()
                )
        finally:
            await database.dispose()

    async def wait_timeline(
        self, company_id: uuid.UUID, count: int, timeout: float = 30.0
    ) -> list[Any]:
        """The timeline once it holds ``count`` events (and no more came for half a second)."""
        deadline = asyncio.get_running_loop().time() + timeout
        rows: list[Any] = []
        while asyncio.get_running_loop().time() < deadline:
            rows = await self.timeline(company_id)
            if len(rows) >= count:
                await asyncio.sleep(0.5)
                return await self.timeline(company_id)
            await asyncio.sleep(0.2)
        raise AssertionError(f"timeline has {len(rows)} events, wanted {count}: {rows}")


@contextlib.asynccontextmanager
async def lead_service(postgres: PostgresServer, nats_url: str) -> AsyncIterator[LeadService]:
    """The real lead service, in-process, with a database and durable of its own."""
    from leadline_lead.config import Settings as LeadSettings
    from leadline_lead.main import create_app as create_lead_app

    url = await migrated_database(postgres, "leadline_lead")
    app = create_lead_app(
        LeadSettings(
            database_url=url,
            nats_url=nats_url,
            identity_secret=SECRET,
            environment="test",
            consumer_prefix=f"lead-for-sync-{uuid.uuid4().hex[:10]}",
            consumer_deliver_since=datetime.now(UTC) - timedelta(seconds=1),
        )
    )
    async with running_app(app) as client:
        yield LeadService(client, url)


@pytest.fixture
async def leads(
    bare_world: SyncWorld, postgres: PostgresServer, nats_url: str
) -> Callable[[], contextlib.AbstractAsyncContextManager[LeadService]]:
    """Starts the real lead service when the test asks for it (it answers for the world's company then)."""
    await bare_world.stop_answering_lead_directory()
    return lambda: lead_service(postgres, nats_url)


@pytest.fixture
def quota(
    postgres: PostgresServer, nats_url: str
) -> Callable[[], contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]:
    """Starts the real quota service when the test asks for it."""
    return lambda: quota_service(postgres, nats_url)


@pytest.fixture
async def dropping_proxy(dovecot: DovecotServer) -> AsyncIterator[DroppingProxy]:
    """Dovecot's plain (STARTTLS) port behind a proxy whose connections the test can cut."""
    proxy = await DroppingProxy(dovecot.port).start()
    yield proxy
    await proxy.stop()
