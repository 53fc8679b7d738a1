"""Send-service test support: real aiosmtpd servers, the real quota service, the app on real NATS.

SMTP servers (aiosmtpd, each on its own loopback port, certificates from the
session's trustme CA) record every envelope, the message bytes and the raw
bytes each session put on the wire.  Their behaviour is chosen per server:
accept, answer 4xx to the first DATA of each message then accept, answer 5xx,
or stay silent after the final "." (to make a reply go missing).  The synced
mailbox answer of the sync service is played by a small NATS responder (the
lead engineer's cross-service tests use the real sync service).
"""

from __future__ import annotations

import asyncio
import email
import hashlib
import re
import ssl
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from typing import Any

import httpx
import nats
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword
from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy import select

from leadline_kit.db import Database
from leadline_kit.infra import DovecotServer, PostgresServer, free_port
from leadline_kit.testing.clients import as_caller, make_identity, running_app
from leadline_kit.testing.delivery import deliver_locally
from leadline_kit.testing.fixtures import migrated_database
from leadline_kit.testing.oauth import smtp_xoauth2
from leadline_proto.events import LeadCreatedV1, LeadPayload, utcnow
from leadline_proto.requests import (
    LeadAddresses,
    LeadAddressesReply,
    LeadAddressesRequest,
    MailboxSmtpReply,
    MailboxSmtpRequest,
)
from leadline_proto.subjects import RPC_LEAD_ADDRESSES, RPC_MAILBOX_SMTP
from leadline_quota.config import Settings as QuotaSettings
from leadline_quota.main import create_app as create_quota_app
from leadline_send.config import Settings
from leadline_send.main import create_app
from leadline_send.models import lead_address

SECRET = "send-test-identity-secret"
SMTP_USER, SMTP_PASSWORD = "sender@company.example.com", "s3cret-pass"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=policy.default)

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


@dataclass
class SmtpBehaviour:
    mode: str = "accept"  # accept | tempfail_once | reject | silent | slow (pause, then accept)
    silent_seconds: float = 3.0
    tempfailed: set[str] = field(default_factory=set)
    pipelining: bool = True  # offered in EHLO, as by every large provider (RFC 2920)
    sender_reply: str | None = None  # MAIL FROM refused with this reply


REFUSED_RECIPIENTS = {
    "nobody": "550 5.1.1 No such user",
    "busy": "450 4.2.1 Mailbox busy, try later",
    "gone": "550-5.1.1 The account does not exist.\r\n550 5.1.1 Check the address.",
}


class RecordingHandler:
    def __init__(self, behaviour: SmtpBehaviour, deliver_to: DovecotServer | None = None) -> None:
        self.behaviour = behaviour
        self.deliver_to = (
            deliver_to  # mail for its users lands in their INBOX (Mail Sync's address proof)
        )
        self.received: list[Received] = []
        self.data_commands = 0
        self.wire: list[bytearray] = []  # what each session received
        self.ended: set[int] = (
            set()
        )  # the sessions over (closed by either side), by the id of their protocol
        self.reads: list[bytes] = []  # each read of every session, to see what came in one write
        self.auth_attempts = 0
        self.logins = {SMTP_USER: SMTP_PASSWORD}
        # AUTH XOAUTH2: the user an OAuth2 access token signs in (None: not a live token)
        self.token_owner: Callable[[str], str | None] = lambda token: None
        self.lock = threading.Lock()

    async def handle_EHLO(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.behaviour.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if self.behaviour.sender_reply is not None:
            return self.behaviour.sender_reply
        envelope.mail_from, envelope.mail_options = address, options
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        """``nobody@…`` and ``gone@…`` (a multi-line reply) are refused for good, ``busy@…`` for now."""
        refusal = REFUSED_RECIPIENTS.get(address.partition("@")[0])
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        with self.lock:
            self.data_commands += 1
        mode = self.behaviour.mode
        if mode == "reject":
            return "550 5.7.1 Message refused by policy"
        if mode == "tempfail_once":
            message_id = str(email.message_from_bytes(data, policy=policy.default)["Message-ID"])
            if message_id not in self.behaviour.tempfailed:
                self.behaviour.tempfailed.add(message_id)
                return "451 4.3.0 Greylisted, try again later"
        if mode in ("silent", "slow"):
            await asyncio.sleep(self.behaviour.silent_seconds)
        with self.lock:
            self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), data))
        if self.deliver_to is not None:
            deliver_locally(self.deliver_to, envelope.rcpt_tos, data)
        return "250 2.0.0 Ok: queued"

    def authenticate(
        self, server: SMTP, session: SmtpSession, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        with self.lock:
            self.auth_attempts += 1
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.logins.get(auth_data.login.decode()) == auth_data.password.decode()
        )
        return AuthResult(success=ok)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        with self.lock:
            self.auth_attempts += 1
        return await smtp_xoauth2(server, args, self.token_owner)  # type: ignore[no-any-return]

    def by_message_id(self, message_id: str) -> list[Received]:
        return [r for r in list(self.received) if r.message_id == message_id]


class RecordingSMTP(SMTP):
    """aiosmtpd's server, also keeping the raw bytes each session received (after TLS is undone)."""

    def __init__(self, *args: Any, record: bytearray, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._record = record

    def data_received(self, data: bytes) -> None:
        self._record.extend(data)
        self.event_handler.reads.append(data)
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        self.event_handler.ended.add(id(self))
        super().connection_lost(error)


class RecordingController(Controller):
    def factory(self) -> SMTP:
        record = bytearray()
        self.handler.wire.append(record)
        return RecordingSMTP(self.handler, record=record, **self.SMTP_kwargs)


@dataclass
class SmtpServer:
    port: int
    tls: str
    handler: RecordingHandler
    controller: RecordingController
    pinned_sha256: str | None = None

    @property
    def received(self) -> list[Received]:
        return self.handler.received


SmtpFactory = Callable[..., SmtpServer]


@pytest.fixture(scope="session")
def ca_file(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def smtp_server(tls_ca: trustme.CA) -> Iterator[SmtpFactory]:
    """Start aiosmtpd servers: ``smtp_server(tls="starttls"|"implicit"|"none", mode=..., self_signed=False,
    pipelining=True, deliver_to=None)``; ``deliver_to``: a Dovecot whose users get their mail in their INBOX."""
    started: list[RecordingController] = []

    def start(
        tls: str = "starttls",
        mode: str = "accept",
        self_signed: bool = False,
        silent_seconds: float = 3.0,
        idle_timeout: float = 300.0,
        pipelining: bool = True,
        deliver_to: DovecotServer | None = None,
    ) -> SmtpServer:
        ca = trustme.CA() if self_signed else tls_ca
        cert = ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        handler = RecordingHandler(
            SmtpBehaviour(mode=mode, silent_seconds=silent_seconds, pipelining=pipelining),
            deliver_to,
        )
        kwargs: dict[str, Any] = {
            "authenticator": handler.authenticate,
            "auth_required": True,
            "timeout": idle_timeout,
        }
        if tls == "starttls":
            kwargs.update(tls_context=context, require_starttls=True, auth_require_tls=True)
        elif tls == "implicit":
            kwargs.update(ssl_context=context, auth_require_tls=False)
        else:  # no STARTTLS offered at all, AUTH offered in the clear
            kwargs.update(auth_require_tls=False)
        port = free_port()
        controller = RecordingController(handler, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        pin = None
        if self_signed:
            der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
            pin = hashlib.sha256(der).hexdigest()
        return SmtpServer(
            port=port, tls=tls, handler=handler, controller=controller, pinned_sha256=pin
        )

    yield start
    for controller in started:
        if controller._thread is not None:  # some tests stop a server themselves
            controller.stop()


@pytest.fixture
async def quota_service(postgres: PostgresServer, nats_url: str) -> AsyncIterator[str]:
    """The real quota service, in-process, on the session's NATS; yields its database URL."""
    url = await migrated_database(postgres, "leadline_quota")
    settings = QuotaSettings(
        database_url=url,
        nats_url=nats_url,
        identity_secret=SECRET,
        environment="test",
        consumer_prefix=f"quota-send-test-{uuid.uuid4().hex[:8]}",
    )
    async with running_app(create_quota_app(settings)):
        yield url


class MailboxDirectoryStub:
    """Answers RPC_MAILBOX_SMTP as the sync service would, from a table the test fills."""

    def __init__(self) -> None:
        self.replies: dict[tuple[uuid.UUID, uuid.UUID], MailboxSmtpReply] = {}

    async def answer(self, msg: Any) -> None:
        request = MailboxSmtpRequest.model_validate_json(msg.data)
        reply = self.replies.get(
            (request.company_id, request.user_id), MailboxSmtpReply(found=False)
        )
        await msg.respond(reply.model_dump_json().encode())


@pytest.fixture
async def mailboxes(nats_url: str) -> AsyncIterator[MailboxDirectoryStub]:
    stub = MailboxDirectoryStub()
    nc = await nats.connect(nats_url)
    await nc.subscribe(RPC_MAILBOX_SMTP, cb=stub.answer)
    await nc.flush()
    yield stub
    await nc.close()


class LeadServiceStub:
    """Answers RPC_LEAD_ADDRESSES as the lead service would, from the leads the test created there."""

    def __init__(self) -> None:
        self.leads: dict[tuple[uuid.UUID, uuid.UUID], LeadAddresses] = {}
        self.asked: list[LeadAddressesRequest] = []
        self.subscription: Any = None

    def create(self, company_id: uuid.UUID, addresses: list[str], name: str = "") -> uuid.UUID:
        """A lead the lead service has; its lead.created is not published (it is "on its way")."""
        lead_id = uuid.uuid4()
        self.leads[(company_id, lead_id)] = LeadAddresses(
            lead_id=lead_id, name=name, addresses=addresses
        )
        return lead_id

    async def answer(self, msg: Any) -> None:
        request = LeadAddressesRequest.model_validate_json(msg.data)
        self.asked.append(request)
        found = [
            self.leads[(request.company_id, i)]
            for i in request.lead_ids
            if (request.company_id, i) in self.leads
        ]
        await msg.respond(LeadAddressesReply(leads=found).model_dump_json().encode())


@pytest.fixture
async def lead_service(nats_url: str) -> AsyncIterator[LeadServiceStub]:
    stub = LeadServiceStub()
    nc = await nats.connect(nats_url)
    stub.subscription = await nc.subscribe(RPC_LEAD_ADDRESSES, cb=stub.answer)
    await nc.flush()
    yield stub
    await nc.close()


@pytest.fixture
async def send_url(postgres: PostgresServer) -> str:
    return await migrated_database(postgres, "leadline_send")


def send_settings(url: str, nats_url: str, ca_file: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "nats_url": nats_url,
        "identity_secret": SECRET,
        "environment": "test",
        "mail_allow_networks": "127.0.0.0/8",
        "mail_cafile": ca_file,
        "retry_base_seconds": 0.2,
        "retry_max_seconds": 1.0,
        "queue_poll_seconds": 0.1,
        "recovery_interval_seconds": 0.5,
        "consumer_prefix": f"send-test-{uuid.uuid4().hex[:8]}",
        # a new durable starts here, not at the session stream's first event (thousands by the send tests)
        "consumer_deliver_since": datetime.now(UTC) - timedelta(seconds=1),
        "smtp_connections": 2,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class SendHarness:
    client: httpx.AsyncClient  # unauthenticated (public endpoints)
    admin: httpx.AsyncClient
    user: httpx.AsyncClient
    company_id: uuid.UUID
    user_id: uuid.UUID
    db: Database
    nats_url: str
    settings: Settings
    stop: Callable[[], Awaitable[None]]
    lead_service: LeadServiceStub

    async def add_account(self, server: SmtpServer, **fields: Any) -> dict[str, Any]:
        """Create a company SMTP account on ``server`` and confirm it with its test email's code."""
        body: dict[str, Any] = {
            "name": f"account {server.port}",
            "type": "campaigns",
            "host": "127.0.0.1",
            "port": server.port,
            "tls": {"none": "starttls"}.get(server.tls, server.tls),
            "username": SMTP_USER,
            "password": SMTP_PASSWORD,
            "from_email": "news@company.example.com",
            "from_name": "Company News",
            "active": True,
        }
        if server.pinned_sha256:
            body["pinned_sha256"] = server.pinned_sha256
        body.update(fields)
        created = await self.admin.post("/v1/smtp-accounts", json=body)
        assert created.status_code == 201, created.text
        account = created.json()
        before = len(server.received)
        tested = await self.admin.post(
            f"/v1/smtp-accounts/{account['id']}/test-email",
            json={"to": "admin@company.example.com"},
        )
        assert tested.status_code == 202, tested.text
        mail = server.received[before]
        code = re.search(r"code for the SMTP account .* is (\d{6})", mail.message.get_content())
        assert code, mail.message.get_content()
        confirmed = await self.admin.post(
            f"/v1/smtp-accounts/{account['id']}/confirm", json={"code": code.group(1)}
        )
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["confirmed"] is True
        return dict(confirmed.json())

    async def add_lead(self, addresses: list[str], name: str = "") -> uuid.UUID:
        """Publish lead.created as the lead service would, and wait until the send service has it."""
        lead_id = uuid.uuid4()
        nc = await nats.connect(self.nats_url)
        try:
            event = LeadCreatedV1(
                company_id=self.company_id,
                payload=LeadPayload(
                    lead_id=lead_id, name=name, addresses=addresses, created_at=utcnow()
                ),
            )
            await nc.jetstream().publish(
                event.subject,
                event.model_dump_json().encode(),
                headers={"Nats-Msg-Id": str(event.event_id)},
            )
        finally:
            await nc.close()
        for _ in range(200):
            async with self.db.session() as s:
                if await s.scalar(
                    select(lead_address.c.lead_id).where(lead_address.c.lead_id == lead_id)
                ):
                    return lead_id
            await asyncio.sleep(0.05)
        raise AssertionError("lead.created was not applied")

    async def wait_for(
        self, message_id: str, states: set[str], timeout: float = 20.0
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            got = await self.user.get(f"/v1/messages/{message_id}")
            assert got.status_code == 200, got.text
            if got.json()["state"] in states or asyncio.get_running_loop().time() > deadline:
                return dict(got.json())
            await asyncio.sleep(0.05)


HarnessFactory = Callable[..., Awaitable[SendHarness]]


@pytest.fixture
async def send_service(
    send_url: str, nats_url: str, ca_file: str, lead_service: LeadServiceStub
) -> AsyncIterator[HarnessFactory]:
    """``await send_service(**settings)`` starts the app and returns callers of one fresh company."""
    stack: list[Any] = []

    async def start(**overrides: Any) -> SendHarness:
        settings = send_settings(send_url, nats_url, ca_file, **overrides)
        context = running_app(create_app(settings))
        client = await context.__aenter__()
        stack.append(context)

        async def stop() -> None:
            stack.remove(context)
            await context.__aexit__(None, None, None)

        company = uuid.uuid4()
        admin_identity = make_identity("administrator", company_id=company)
        user_identity = make_identity("salesperson", company_id=company)
        db = Database(send_url, "send")
        stack.append(db)
        return SendHarness(
            client=client,
            admin=as_caller(client, admin_identity, SECRET),
            user=as_caller(client, user_identity, SECRET),
            company_id=company,
            user_id=user_identity.user_id,
            db=db,
            nats_url=nats_url,
            settings=settings,
            stop=stop,
            lead_service=lead_service,
        )

    yield start
    for item in reversed(stack):
        if isinstance(item, Database):
            await item.dispose()
        else:
            await item.__aexit__(None, None, None)


def has_bare_line_end(data: bytes) -> bool:
    return bool(re.search(rb"\r(?!\n)|(?<!\r)\n", data))
