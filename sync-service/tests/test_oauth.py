"""Connecting Gmail / Microsoft by signing in (OAuth2 + PKCE), against a real Dovecot whose oauth2 passdb asks
a local authorization server about each token, and aiosmtpd accepting AUTH XOAUTH2 (issue 22)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import subprocess
import threading
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from leadline_kit.infra import DovecotServer, NatsServer, free_port, postgres_bin_dir
from leadline_kit.sealing import KeyRing
from leadline_kit.testing.clients import running_app
from leadline_kit.testing.oauth import FakeOAuthProvider, smtp_xoauth2
from leadline_mail.imap import ImapSettings, connect_imap
from leadline_proto.requests import MailboxSmtpReply, MailboxSmtpRequest
from leadline_proto.subjects import RPC_MAILBOX_SMTP
from leadline_sync.oauth.apps import resolve_apps, seal_client_secret
from leadline_sync.oauth.flow import _proven_address
from leadline_sync.oauth.tokens import TokenSet
from leadline_sync.problems import SignInRefused

from .conftest import DroppingProxy, MailAccount, SyncWorld

REDIRECT = "https://crm.example/v1/mail-sync/oauth/callback"


@pytest.fixture(scope="session")
def provider(oauth_provider: FakeOAuthProvider) -> FakeOAuthProvider:
    return oauth_provider


@dataclass
class XOAuth2Handler:
    """aiosmtpd with AUTH XOAUTH2: the token must be live at the provider and belong to the user named."""

    provider: FakeOAuthProvider
    received: list[tuple[str, str, bytes]] = field(default_factory=list)  # (login, mail from, data)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        return await smtp_xoauth2(server, args, self.provider.access_token_valid)  # type: ignore[no-any-return]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content or b""
        data = content if isinstance(content, bytes) else content.encode()
        self.received.append((str(session.auth_data), str(envelope.mail_from), data))
        return "250 OK"


@pytest.fixture(scope="module")
def xoauth2_smtp(
    tls_ca: trustme.CA, provider: FakeOAuthProvider
) -> Iterator[tuple[int, XOAuth2Handler]]:
    cert = tls_ca.issue_cert("localhost", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    handler = XOAuth2Handler(provider)
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        auth_require_tls=True,
        tls_context=context,
        require_starttls=True,
    )
    controller.start()
    yield port, handler
    controller.stop()


@dataclass
class OAuthWorld:
    world: SyncWorld
    provider: FakeOAuthProvider
    dovecot: DovecotServer
    smtp_port: int
    smtp: XOAuth2Handler
    imap_port: int  # where the sync connects: a proxy in front of Dovecot's STARTTLS port that the test can cut
    proxy: DroppingProxy
    handed_out: list[str] = field(
        default_factory=list
    )  # one-time sign-ins the callback gave the browser

    def app(self, return_url: str | None = None, **overrides: Any) -> Any:
        """The sync app with Gmail and Office 365 sign-in pointed at the fake provider (Google- and
        Microsoft-shaped), Dovecot behind the cuttable proxy and aiosmtpd."""
        ring = KeyRing(self.world.settings().credential_keys())
        servers = {
            "imap": {"host": "127.0.0.1", "port": self.imap_port, "tls": "starttls"},
            "smtp": {"host": "127.0.0.1", "port": self.smtp_port, "tls": "starttls"},
        }
        apps = {
            provider: {
                "client_id": self.provider.client_id,
                "redirect_url": REDIRECT,
                "return_url": return_url,
                "client_secret_sealed": seal_client_secret(
                    ring, provider, self.provider.client_secret
                ),
                **endpoints,
                **servers,
            }
            for provider, endpoints in (
                ("gmail", self.provider.endpoints()),
                ("office365", {**self.provider.microsoft_endpoints(), "tenant": "organizations"}),
            )
        }
        return self.world.app(sync_oauth_apps=apps, **overrides)

    def account(self) -> MailAccount:
        account = self.world.account()
        self.dovecot.add_user(
            account.address, account.password
        )  # to seed mail; the sync signs in by token
        return account

    async def append(self, account: MailAccount, folder: str, *raws: bytes) -> None:
        client = await connect_imap(
            ImapSettings(
                host="127.0.0.1",
                port=self.dovecot.tls_port,
                tls="implicit",
                username=account.address,
                password=account.password,
                cafile=self.world.ca_file,
                allow_networks=self.world.settings().allow_networks(),
            )
        )
        try:
            for raw in raws:
                await client.append(folder, raw)
        finally:
            await client.logout()

    async def sign_in(
        self,
        api: httpx.AsyncClient,
        service: httpx.AsyncClient,
        address: str,
        provider: str = "gmail",
    ) -> httpx.Response:
        """Start, consent at the provider, bring its answer back to the callback as the browser (no key), and
        finish with the caller's key as the CRM's page does."""
        started = await api.post(f"/v1/mail-sync/oauth/{provider}/start")
        assert started.status_code == 200, started.text
        self.provider.sign_in(address)
        return await self.finish(
            api, await self.browser_back(service, started.json()["authorization_url"])
        )

    async def browser_back(self, service: httpx.AsyncClient, authorization_url: str) -> str:
        """The one-time sign-in a keyless callback hands the browser (in a redirect to the app's return URL,
        or in the body)."""
        answer = await service.get(
            "/v1/mail-sync/oauth/callback", params=await self.consent(authorization_url)
        )
        if answer.status_code == 303:
            location = urllib.parse.urlsplit(answer.headers["location"])
            assert answer.headers["cache-control"] == "no-store"
            sign_in = dict(urllib.parse.parse_qsl(location.query))["sign_in"]
        else:
            assert answer.status_code == 200 and "mailbox_id" not in answer.json(), answer.text
            sign_in = str(answer.json()["sign_in"])
        self.handed_out.append(sign_in)
        return sign_in

    @staticmethod
    async def finish(api: httpx.AsyncClient, sign_in: str) -> httpx.Response:
        return await api.post("/v1/mail-sync/oauth/finish", json={"sign_in": sign_in})

    @staticmethod
    async def consent(authorization_url: str) -> dict[str, str]:
        async with httpx.AsyncClient() as browser:
            answer = await browser.get(authorization_url)
        assert answer.status_code == 302, answer.text
        location = answer.headers["location"]
        assert location.startswith(REDIRECT + "?")
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


@pytest.fixture
async def oauth(
    world: SyncWorld,
    provider: FakeOAuthProvider,
    oauth_dovecot: DovecotServer,
    xoauth2_smtp: tuple[int, XOAuth2Handler],
) -> AsyncIterator[OAuthWorld]:
    proxy = await DroppingProxy(oauth_dovecot.port).start()
    provider.expires_in, provider.unavailable_refreshes = 3600, 0
    yield OAuthWorld(
        world, provider, oauth_dovecot, xoauth2_smtp[0], xoauth2_smtp[1], proxy.port, proxy
    )
    await proxy.stop()


def no_secret_in(text: str, provider: FakeOAuthProvider) -> None:
    for token in [*provider.issued_tokens(), provider.client_secret]:
        assert token not in text


def urlunsplit(url: urllib.parse.SplitResult) -> str:
    return urllib.parse.urlunsplit(url)


async def test_bad_callbacks_are_refused_and_store_nothing(oauth: OAuthWorld) -> None:
    world, me, other, victim = oauth.world, oauth.account(), oauth.account(), oauth.account()
    async with running_app(oauth.app()) as service:
        api, other_api = world.caller(service, me.user), world.caller(service, other.user)
        victim_api = world.caller(service, victim.user)
        assert (
            (
                await service.get(
                    "/v1/mail-sync/oauth/callback", params={"code": "x", "state": "forged"}
                )
            )
            .json()["type"]
            .endswith("oauth-state-invalid")
        )
        assert (await service.get("/v1/mail-sync/oauth/callback")).status_code == 400

        # the provider answers with an error (the user said no): a problem, and the state is spent
        started = (await api.post("/v1/mail-sync/oauth/gmail/start")).json()
        state = dict(
            urllib.parse.parse_qsl(urllib.parse.urlsplit(started["authorization_url"]).query)
        )["state"]
        oauth.provider.deny = True
        denied = await service.get(
            "/v1/mail-sync/oauth/callback", params=await oauth.consent(started["authorization_url"])
        )
        assert denied.status_code == 400 and denied.json()["type"].endswith("oauth-provider-error")
        assert (
            (
                await service.get(
                    "/v1/mail-sync/oauth/callback", params={"code": "c", "state": state}
                )
            )
            .json()["type"]
            .endswith("oauth-state-invalid")
        )

        # login CSRF: another user starts a sign-in as themselves and gets the victim to consent with the
        # victim's account.  The victim's browser brings the answer back without a key: nothing connects,
        # and the victim's CRM page finishing it with the victim's key is refused, the code never exchanged
        grants = oauth.provider.code_grants
        started = (await other_api.post("/v1/mail-sync/oauth/gmail/start")).json()
        oauth.provider.sign_in(victim.address)
        sign_in = await oauth.browser_back(service, started["authorization_url"])
        refused = await oauth.finish(victim_api, sign_in)
        assert refused.status_code == 403 and refused.json()["type"].endswith(
            "oauth-state-other-user"
        )
        spent = await oauth.finish(
            other_api, sign_in
        )  # used up: not even its starter finishes it now
        assert spent.status_code == 400 and spent.json()["type"].endswith("oauth-sign-in-invalid")
        assert oauth.provider.code_grants == grants
        for caller in (other_api, victim_api):
            assert (await caller.get("/v1/mail-sync")).status_code == 404

        # a handed-back sign-in that is unknown or expired, and one finished twice
        assert (await oauth.finish(api, "forged")).json()["type"].endswith("oauth-sign-in-invalid")
        started = (await api.post("/v1/mail-sync/oauth/gmail/start")).json()
        sign_in = await oauth.browser_back(service, started["authorization_url"])
        world.clock.advance(timedelta(minutes=3))
        assert (await oauth.finish(api, sign_in)).status_code == 400
        world.clock.advance(timedelta(minutes=-3))
        assert (await oauth.sign_in(api, service, me.address)).status_code == 200

        # a state replayed after a good sign-in, with a key or without
        started = (await api.post("/v1/mail-sync/oauth/gmail/start")).json()
        callback = await oauth.consent(started["authorization_url"])
        assert (await api.get("/v1/mail-sync/oauth/callback", params=callback)).status_code == 200
        for client in (service, api):
            replayed = await client.get("/v1/mail-sync/oauth/callback", params=callback)
            assert replayed.status_code == 400 and replayed.json()["type"].endswith(
                "oauth-state-invalid"
            )

        # an expired state
        started = (await api.post("/v1/mail-sync/oauth/gmail/start")).json()
        callback = await oauth.consent(started["authorization_url"])
        world.clock.advance(timedelta(minutes=11))
        assert (
            await service.get("/v1/mail-sync/oauth/callback", params=callback)
        ).status_code == 400
        world.clock.advance(timedelta(minutes=-11))

        # a state of another user passed on with someone else's key: refused (and spent); nothing stored
        started = (await api.post("/v1/mail-sync/oauth/gmail/start")).json()
        oauth.provider.sign_in(other.address)
        callback = await oauth.consent(started["authorization_url"])
        stolen = await other_api.get("/v1/mail-sync/oauth/callback", params=callback)
        assert stolen.status_code == 403 and stolen.json()["type"].endswith(
            "oauth-state-other-user"
        )
        assert (await other_api.get("/v1/mail-sync")).status_code == 404

        # another user of the company signs in with the address already synced: 409, nothing stored
        taken = await oauth.sign_in(other_api, service, me.address)
        assert taken.status_code == 409, taken.text
        assert (await other_api.get("/v1/mail-sync")).status_code == 404

        # an unknown provider, one without an app, a body with an address
        assert (await api.post("/v1/mail-sync/oauth/nope/start")).status_code == 404
        assert (await api.post("/v1/mail-sync/oauth/outlook/start")).status_code == 422
        assert (
            await api.post("/v1/mail-sync/oauth/gmail/start", json={"address": "x@y.example"})
        ).status_code == 422
        count = await world.sql(
            "SELECT count(*) FROM sync.mailbox WHERE company_id = :c", {"c": world.company_id}
        )
        assert count[0][0] == 1


async def test_token_renewed_once_for_concurrent_connections_5xx_retried_and_a_new_sign_in_taken(
    oauth: OAuthWorld,
) -> None:
    world, me = oauth.world, oauth.account()
    async with running_app(oauth.app(sync_oauth_refresh_margin_seconds=300)) as service:
        api = world.caller(service, me.user)
        assert (await oauth.sign_in(api, service, me.address)).status_code == 200
        await world.wait_status(api, "enabled")
        context = service._transport.app.state.runtime.context  # type: ignore[attr-defined]
        mailbox_id = uuid.UUID((await api.get("/v1/mail-sync")).json()["id"])
        before = oauth.provider.refresh_grants
        # near expiry: many connections ask at once (and the token endpoint is slow), one renewal
        await world.sql_write(
            "UPDATE sync.mailbox SET oauth_expires_at = now() + interval '1 minute'"
        )
        oauth.provider.refresh_delay = 0.3
        try:
            tokens = await asyncio.gather(
                *(context.tokens.access_token(mailbox_id) for _ in range(8))
            )
        finally:
            oauth.provider.refresh_delay = 0.0
        assert oauth.provider.refresh_grants == before + 1
        assert len(set(tokens)) == 1 and oauth.provider.access_token_valid(tokens[0]) == me.address
        # a token endpoint answering 503 twice is asked again, and nothing is an error
        await world.sql_write("UPDATE sync.mailbox SET oauth_expires_at = now()")
        oauth.provider.unavailable_refreshes = 2
        fresh = await context.tokens.access_token(mailbox_id)
        assert fresh != tokens[0] and oauth.provider.refresh_grants == before + 2
        assert (await api.get("/v1/mail-sync/errors")).json()["items"] == []

        # consent withdrawn, and the user signs in again while a renewal with the old refresh token is under
        # way: the refusal that follows gives the new sign-in's token, not an error
        oauth.provider.revoke_all(me.address)
        await world.sql_write("UPDATE sync.mailbox SET oauth_expires_at = now()")
        oauth.provider.hold_refreshes = held = threading.Event()
        try:
            renewing = asyncio.create_task(context.tokens.access_token(mailbox_id))
            assert (await oauth.sign_in(api, service, me.address)).status_code == 200
        finally:
            held.set()
            oauth.provider.hold_refreshes = None
        assert oauth.provider.access_token_valid(await renewing) == me.address
        assert (await api.get("/v1/mail-sync")).json()["status"] == "enabled"
        assert (await api.get("/v1/mail-sync/errors")).json()["items"] == []

        # the provider ends the access token before its time: the mail server's refusal renews it at once
        grants = oauth.provider.refresh_grants
        oauth.provider.expire_access_tokens(me.address)
        assert oauth.proxy.cut() >= 1
        for _ in range(200):
            if oauth.provider.refresh_grants > grants and oauth.proxy.links:
                break
            await asyncio.sleep(0.1)
        assert oauth.provider.refresh_grants == grants + 1 and oauth.proxy.links
        await world.wait_status(api, "enabled")
        assert (await api.get("/v1/mail-sync/errors")).json()["items"] == []


MICROSOFT_SCOPES = {
    "openid",
    "email",
    "offline_access",
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
}


@pytest.mark.parametrize("preset", ["gmail", "office365"])
async def test_sign_in_history_idle_expiry_revocation_and_a_new_sign_in_with_no_token_shown(
    oauth: OAuthWorld, preset: str, caplog: pytest.LogCaptureFixture, nats_server: NatsServer
) -> None:
    """The whole flow, with Google's shape and with Microsoft's (the tenant in the v2.0 endpoints' path, the
    account named by the ID token's preferred_username and tid, a refresh token only with offline_access, a
    new refresh token on every renewal).  The Google sign-in is passed on by the CRM's page with the user's
    key; the Microsoft one comes back to Leadline's callback and on through the CRM's return URL."""
    world, me = oauth.world, oauth.account()
    lead = "lead@customer.example"
    name = {"gmail": "Google", "office365": "Microsoft"}[preset]
    caplog.set_level(logging.DEBUG)
    app = oauth.app(return_url="https://crm.example/mail-sync/done?x=1", sync_poll_seconds=60)
    async with running_app(app) as service:
        api = world.caller(service, me.user)
        providers = {p["id"]: p for p in (await api.get("/v1/mail-sync/providers")).json()}
        assert (
            providers["gmail"]["oauth2"]
            and providers["office365"]["oauth2"]
            and not providers["outlook"]["oauth2"]
        )
        assert not providers["yahoo"]["oauth2"] and providers["outlook"]["oauth2_note"]
        await world.add_lead(lead, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        await oauth.append(
            me, "INBOX", world.message(sender=lead, to=[me.address], subject="history")
        )
        started = await api.post(f"/v1/mail-sync/oauth/{preset}/start", json={"smtp_use": "all"})
        url = urllib.parse.urlsplit(started.json()["authorization_url"])
        query = dict(urllib.parse.parse_qsl(url.query))
        assert query["code_challenge_method"] == "S256" and len(query["state"]) >= 43
        assert query["redirect_uri"] == REDIRECT
        oauth.provider.sign_in(me.address)
        if preset == "gmail":
            assert (
                "https://mail.google.com/" in query["scope"].split()
                and query["access_type"] == "offline"
            )
            # the CRM's page receives the provider's redirect and passes it on with the user's key
            done = await api.get(
                "/v1/mail-sync/oauth/callback", params=await oauth.consent(urlunsplit(url))
            )
        else:
            assert url.path == "/organizations/oauth2/v2.0/authorize"
            assert (
                set(query["scope"].split()) == MICROSOFT_SCOPES
                and query["prompt"] == "select_account"
            )
            assert "access_type" not in query
            done = await oauth.finish(api, await oauth.browser_back(service, urlunsplit(url)))
        assert done.status_code == 200 and done.json()["address"] == me.address, done.text
        body = await world.wait_status(api, "enabled")
        assert body["auth"] == "oauth2" and body["provider"] == preset and body["smtp_use"] == "all"
        assert body["imap"]["username"] == me.address
        first = await world.wait_history(api)
        [event] = await world.synced(at_least=1)
        assert event.payload.subject == "history"
        # live mail arrives while the session idles on a token it signed in with
        await oauth.append(
            me, "INBOX", world.message(sender=lead, to=[me.address], subject="while idle")
        )
        assert "while idle" in {e.payload.subject for e in await world.synced(at_least=2)}

        # the send service gets a live access token, never the refresh token
        reply = MailboxSmtpReply.model_validate_json(
            (
                await world.nc.request(
                    RPC_MAILBOX_SMTP,
                    MailboxSmtpRequest(company_id=world.company_id, user_id=me.user.user_id)
                    .model_dump_json()
                    .encode(),
                    timeout=5,
                )
            ).data
        )
        assert reply.auth == "oauth2" and reply.access_token
        assert oauth.provider.access_token_valid(reply.access_token) == me.address
        [refresh_token] = oauth.provider.live_refresh_tokens(me.address)
        assert refresh_token not in reply.model_dump_json()
        assert not reply.smtp_password and not reply.imap_password

        # the access token expires while the session idles; the connection drops; the sync signs in again with
        # a renewed token, without a visible interruption
        oauth.provider.expire_access_tokens(me.address)
        await world.sql_write("UPDATE sync.mailbox SET oauth_expires_at = now()")
        renewals = oauth.provider.refresh_grants
        assert oauth.proxy.cut() >= 1
        await oauth.append(
            me, "INBOX", world.message(sender=lead, to=[me.address], subject="after expiry")
        )
        assert "after expiry" in {e.payload.subject for e in await world.synced(at_least=3)}
        assert oauth.provider.refresh_grants == renewals + 1
        assert (await api.get("/v1/mail-sync")).json()["status"] == "enabled"
        assert (await api.get("/v1/mail-sync/errors")).json()["items"] == []
        if (
            preset == "office365"
        ):  # the refresh token was replaced and the old one died: the new one is kept
            [rotated] = oauth.provider.live_refresh_tokens(me.address)
            assert rotated != refresh_token
            context = service._transport.app.state.runtime.context  # type: ignore[attr-defined]
            await world.sql_write("UPDATE sync.mailbox SET oauth_expires_at = now()")
            await context.tokens.access_token(uuid.UUID(first["id"]))
            assert oauth.provider.refresh_grants == renewals + 2

        # consent withdrawn: the renewal is refused (invalid_grant) and the mailbox shows error with the fix
        oauth.provider.revoke_all(me.address)
        oauth.provider.expire_access_tokens(me.address)
        await world.sql_write("UPDATE sync.mailbox SET oauth_expires_at = now()")
        oauth.proxy.cut()
        errored = await world.wait_status(api, "error")
        assert "no longer lets Leadline" in errored["status_reason"]
        [entry, *_] = (await api.get("/v1/mail-sync/errors")).json()["items"]
        assert entry["kind"] == "oauth_revoked" and f"sign in with {name} again" in entry["fix"]
        await oauth.append(
            me, "INBOX", world.message(sender=lead, to=[me.address], subject="while revoked")
        )

        # a new sign-in resumes from the cursor: no new historical sync, nothing twice
        again = await oauth.sign_in(api, service, me.address, preset)
        assert again.status_code == 200, again.text
        enabled = await world.wait_status(api, "enabled")
        assert enabled["connected_at"] == first["connected_at"] and enabled["id"] == first["id"]
        events = await world.synced(at_least=4)
        assert sorted(e.payload.subject for e in events) == [
            "after expiry",
            "history",
            "while idle",
            "while revoked",
        ]

        # nothing shows a token: responses, a dump of the database, the events, JetStream's store, the logs
        texts = [done.text, again.text, (await api.get("/v1/mail-sync")).text]
        texts.append((await api.get("/v1/mail-sync/errors")).text)
        url = urllib.parse.urlsplit(world.database_url)
        dump = subprocess.run(
            [
                str(postgres_bin_dir() / "pg_dump"),
                "-h",
                "127.0.0.1",
                "-p",
                str(url.port),
                "-U",
                "postgres",
                "--data-only",
                url.path.lstrip("/"),
            ],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        assert "oauth_state" in dump and me.address in dump
        changes = [e.model_dump_json() for e in await world.events("mailbox.status_changed")]
        store = [
            p.read_bytes().decode("latin-1") for p in nats_server.data_dir.rglob("*") if p.is_file()
        ]
        no_secret_in("\n".join([*texts, dump, *changes, *store, caplog.text]), oauth.provider)
        # nor is an authorization code or a one-time sign-in kept or logged (the test's own client logs the
        # callback URLs it asks, with their codes)
        logged = [r.getMessage() for r in caplog.records if "http://service/" not in r.getMessage()]
        kept = "\n".join([dump, *changes, *store, *logged])
        for value in [*oauth.provider.issued_codes(), *oauth.handed_out]:
            assert value not in kept


def test_provider_apps_resolve_with_real_endpoints_and_sealed_secrets(world: SyncWorld) -> None:
    ring = KeyRing(world.settings().credential_keys())
    settings = world.settings(
        sync_oauth_apps={
            "office365": {
                "client_id": "ms",
                "client_secret_sealed": seal_client_secret(ring, "office365", "s3"),
                "redirect_url": REDIRECT,
                "tenant": "contoso.onmicrosoft.com",
            },
            "gmail": {
                "client_id": "g",
                "client_secret_sealed": seal_client_secret(ring, "gmail", "s4"),
                "redirect_url": REDIRECT,
            },
        }
    )
    apps = resolve_apps(settings.sync_oauth_apps, ring)
    office = apps["office365"]
    assert office.client_secret == "s3" and "s3" not in repr(office)
    assert (
        office.token_url
        == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    )
    assert (
        "https://outlook.office.com/SMTP.Send" in office.scopes
        and "offline_access" in office.scopes
    )
    assert apps["gmail"].authorization_url == "https://accounts.google.com/o/oauth2/v2/auth"
    # a secret sealed for one preset does not open for another; an unknown preset is refused at start-up
    moved = world.settings(
        sync_oauth_apps={
            "outlook": {
                "client_id": "o",
                "client_secret_sealed": seal_client_secret(ring, "gmail", "s5"),
                "redirect_url": REDIRECT,
            }
        }
    )
    with pytest.raises(ValueError, match="does not open"):
        resolve_apps(moved.sync_oauth_apps, ring)
    unknown = world.settings(
        sync_oauth_apps={
            "yahoo": {
                "client_id": "y",
                "client_secret_sealed": seal_client_secret(ring, "yahoo", "s6"),
                "redirect_url": REDIRECT,
            }
        }
    )
    with pytest.raises(ValueError, match="not an OAuth2 preset"):
        resolve_apps(unknown.sync_oauth_apps, ring)


def id_token(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


async def test_microsoft_and_google_identities_from_the_id_token(world: SyncWorld) -> None:
    """Microsoft's ID token may name the mailbox only as preferred_username, and its issuer names the account's
    directory; Google's email must be verified."""
    ring = KeyRing(world.settings().credential_keys())
    directory = "4f0a1c9e-5d2b-4e8a-9b1f-3c6d7e8f9a0b"
    apps = resolve_apps(
        world.settings(
            sync_oauth_apps={
                provider: {
                    "client_id": f"{provider}-app",
                    "redirect_url": REDIRECT,
                    "client_secret_sealed": seal_client_secret(ring, provider, "s"),
                    **({"tenant": directory} if provider == "outlook" else {}),
                }
                for provider in ("office365", "outlook", "gmail")
            }
        ).sync_oauth_apps,
        ring,
    )
    context = SimpleNamespace(clock=world.clock, endpoint=None)
    exp = (world.clock() + timedelta(minutes=5)).timestamp()
    issuers = {
        "gmail": {"iss": "https://accounts.google.com"},
        "office365": {
            "iss": "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
            "tid": "9188040d-6c67-4c5b-b112-36a304b66dad",
        },
        "outlook": {"iss": f"https://login.microsoftonline.com/{directory}/v2.0", "tid": directory},
    }

    async def address(provider: str, **claims: Any) -> str:
        tokens = TokenSet(
            access_token="a",
            expires_at=world.clock(),
            refresh_token="r",
            id_token=id_token(
                {"aud": f"{provider}-app", "exp": exp, "nonce": "n", **issuers[provider], **claims}
            ),
        )
        return await _proven_address(context, apps[provider], tokens, "n")  # type: ignore[arg-type]

    assert (
        await address("office365", preferred_username="Ann.Lee@Contoso.example")
        == "ann.lee@contoso.example"
    )
    assert (
        await address("outlook", preferred_username="ann@contoso.example") == "ann@contoso.example"
    )
    assert (
        await address("office365", email="ann@contoso.example", preferred_username="x@y.example")
        == "ann@contoso.example"
    )
    assert (
        await address("gmail", email="bob@gmail.example", email_verified=True)
        == "bob@gmail.example"
    )
    other_directory = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
    for provider, claims in (
        ("office365", {"preferred_username": "not an address"}),
        ("office365", {"email": "ann@contoso.example", "aud": "another-app"}),
        ("office365", {"email": "ann@contoso.example", "nonce": "replayed"}),
        ("office365", {"email": "ann@contoso.example", "exp": exp - 3600}),
        (
            "office365",
            {"email": "ann@contoso.example", "tid": other_directory},
        ),  # iss and tid disagree
        # an app of one directory takes only that directory's accounts
        (
            "outlook",
            {
                "preferred_username": "eve@fabrikam.example",
                "tid": other_directory,
                "iss": f"https://login.microsoftonline.com/{other_directory}/v2.0",
            },
        ),
        ("gmail", {"email": "bob@gmail.example", "iss": "https://evil.example"}),
    ):
        with pytest.raises(SignInRefused):
            await address(provider, **claims)
    # an unverified Google address is not taken, and without a userinfo answer nothing is
    apps["gmail"] = replace(apps["gmail"], userinfo_url=None)
    with pytest.raises(SignInRefused):
        await address("gmail", email="bob@gmail.example", email_verified=False)
