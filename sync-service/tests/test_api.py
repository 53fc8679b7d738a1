"""The Mail Sync API around the sync: presets, connection checks, credentials, SMTP settings RPC, domain check."""

from __future__ import annotations

import base64
import os
import uuid

from leadline_kit.db import Database
from leadline_kit.sealing import CredentialError, Sealed
from leadline_kit.testing.clients import make_identity, running_app
from leadline_proto.requests import MailboxSmtpReply, MailboxSmtpRequest
from leadline_proto.subjects import RPC_MAILBOX_SMTP
from leadline_sync.credentials import CredentialCipher, MailboxSecrets, rotate
from leadline_sync.domain_check import check_domain
from leadline_sync.main import create_app


async def test_providers_need_the_gateway_identity_and_list_every_preset(world) -> None:  # type: ignore[no-untyped-def]
    async with running_app(world.app()) as service:
        assert (await service.get("/v1/mail-sync/providers")).status_code == 401
        api = world.caller(service, make_identity("jr_salesperson", company_id=world.company_id))
        providers = {p["id"]: p for p in (await api.get("/v1/mail-sync/providers")).json()}
    assert {
        "gmail",
        "office365",
        "outlook",
        "yahoo",
        "aol",
        "godaddy",
        "123reg",
        "bluehost",
        "comcast",
        "att",
        "verizon",
        "custom",
    } <= set(providers)
    assert providers["gmail"]["imap"] == {"host": "imap.gmail.com", "port": 993, "tls": "implicit"}
    assert providers["gmail"]["provider_saves_sent"] is True
    assert providers["bluehost"]["host_from_domain"] is True
    assert providers["custom"]["imap"] is None
    assert all(p["imap"]["tls"] != "plain" for p in providers.values() if p["imap"])


async def test_connection_test_reports_each_login_in_the_users_words(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    async with running_app(world.app()) as service:
        api = world.caller(service, me.user)
        ok = (await api.post("/v1/mail-sync/test", json=world.connect_body(me))).json()
        assert ok == {
            "ok": True,
            "imap": {"ok": True, "kind": None, "message": None, "fix": None},
            "smtp": {"ok": True, "kind": None, "message": None, "fix": None},
        }
        body = world.connect_body(me, password="wrong")
        wrong = (await api.post("/v1/mail-sync/test", json=body)).json()
        assert (
            not wrong["ok"]
            and wrong["imap"]["kind"] == "auth_failed"
            and wrong["smtp"]["kind"] == "auth_failed"
        )
        assert "password" in wrong["imap"]["fix"].lower()
        body = world.connect_body(me)
        body["imap"]["port"] = (
            world.dovecot.tls_port
        )  # implicit TLS port, but "use SSL" off: STARTTLS fails
        mismatch = (await api.post("/v1/mail-sync/test", json=body)).json()
        assert mismatch["imap"]["ok"] is False and mismatch["smtp"]["ok"] is True
        # nothing was saved
        assert (await api.get("/v1/mail-sync")).status_code == 404


async def test_private_hosts_refused_unless_the_operator_allows_them(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    async with running_app(world.app(sync_allow_networks="")) as service:
        api = world.caller(service, me.user)
        response = await api.put("/v1/mail-sync", json=world.connect_body(me))
        assert response.status_code == 422
        # worded as a name that does not resolve: the answer maps no internal names
        assert response.json()["kind"] == "unreachable"
        assert "could not be found or is not a public mail server" in response.json()["detail"]
        # line breaks never reach an IMAP command or an SMTP line (R22)
        body = world.connect_body(me)
        body["imap"]["username"] = "a\r\nb LOGOUT"
        assert (await api.put("/v1/mail-sync", json=body)).status_code == 422


async def test_self_signed_certificate_is_pinned_not_unverified(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    # no CA file: Dovecot's certificate is "self-signed" from the service's point of view
    async with running_app(world.app(sync_ca_file=None)) as service:
        api = world.caller(service, me.user)
        body = world.connect_body(me)
        body["imap"].update(port=world.dovecot.tls_port, use_ssl=True)
        refused = await api.put("/v1/mail-sync", json=body)
        assert refused.status_code == 422 and refused.json()["kind"] == "tls"
        body["imap"]["self_signed"] = True
        body["smtp"]["self_signed"] = True
        body["imap"]["certificate_sha256"] = "00" * 32
        wrong_pin = await api.put("/v1/mail-sync", json=body)
        assert wrong_pin.status_code == 422 and wrong_pin.json()["kind"] == "tls"
        del body["imap"]["certificate_sha256"]
        connected = await api.put("/v1/mail-sync", json=body)
        assert connected.status_code == 200, connected.text
        pin = connected.json()["imap"]["certificate_sha256"]
        assert connected.json()["imap"]["self_signed"] is True and len(pin) == 64
        await world.wait_status(api, "enabled")


async def test_smtp_settings_rpc_answers_the_send_service(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    async with running_app(world.app()) as service:
        api = world.caller(service, me.user)
        body = world.connect_body(me) | {"smtp_use": "all"}
        assert (await api.put("/v1/mail-sync", json=body)).status_code == 200
        request = MailboxSmtpRequest(company_id=world.company_id, user_id=me.user.user_id)
        reply = MailboxSmtpReply.model_validate_json(
            (
                await world.nc.request(
                    RPC_MAILBOX_SMTP, request.model_dump_json().encode(), timeout=5
                )
            ).data
        )
        assert (
            reply.found
            and reply.smtp_password == me.password
            and reply.imap_password == me.password
        )
        assert (
            reply.smtp_use == "all" and reply.smtp_tls == "starttls" and reply.sent_folder == "Sent"
        )
        assert reply.provider_saves_sent is False
        other = MailboxSmtpRequest(company_id=uuid.uuid4(), user_id=me.user.user_id)
        missing = MailboxSmtpReply.model_validate_json(
            (
                await world.nc.request(
                    RPC_MAILBOX_SMTP, other.model_dump_json().encode(), timeout=5
                )
            ).data
        )
        assert missing.found is False
        stored = await world.sql("SELECT credential_ciphertext FROM sync.mailbox")
        assert me.password.encode() not in bytes(stored[0][0])


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def test_credentials_bound_to_their_row_and_rotated(world) -> None:  # type: ignore[no-untyped-def]
    old, new = f"k1:{_key()}", f"k2:{_key()}"
    me, other = world.account(), world.account()
    async with running_app(world.app(sync_credential_keys=old)) as service:
        for account in (me, other):
            api = world.caller(service, account.user)
            assert (
                await api.put("/v1/mail-sync", json=world.connect_body(account))
            ).status_code == 200
    rows = await world.sql(
        "SELECT id, company_id, credential_key_id, credential_wrapped_key, credential_ciphertext "
        "FROM sync.mailbox ORDER BY created_at"
    )
    cipher = CredentialCipher(world.settings(sync_credential_keys=old).credential_keys())
    first, second = rows
    sealed = Sealed(first[2], bytes(first[3]), bytes(first[4]))
    assert cipher.open(first[1], first[0], sealed) == MailboxSecrets(me.password, me.password)
    try:
        cipher.open(second[1], second[0], sealed)  # copied into another row: refuses to decrypt
        raise AssertionError("a ciphertext decrypted under another mailbox's id")
    except CredentialError:
        pass
    # rotation: new key first, old key kept until every row is re-encrypted
    rotated_settings = world.settings(sync_credential_keys=f"{new},{old}")
    database = Database(world.database_url, "sync")
    try:
        assert await rotate(database, CredentialCipher.from_settings(rotated_settings)) == 2
        assert await rotate(database, CredentialCipher.from_settings(rotated_settings)) == 0
    finally:
        await database.dispose()
    assert {r[0] for r in await world.sql("SELECT credential_key_id FROM sync.mailbox")} == {"k2"}
    async with running_app(create_app(world.settings(sync_credential_keys=new))) as service:
        request = MailboxSmtpRequest(company_id=world.company_id, user_id=me.user.user_id)
        reply = MailboxSmtpReply.model_validate_json(
            (
                await world.nc.request(
                    RPC_MAILBOX_SMTP, request.model_dump_json().encode(), timeout=5
                )
            ).data
        )
        assert reply.found and reply.imap_password == me.password


class FakeDns:
    """DNS answers of the outside world."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records

    async def txt(self, name: str) -> list[str]:
        return self.records.get(name, [])


async def test_domain_check_reports_dmarc_and_dkim() -> None:
    published = await check_domain(
        "good.example",
        FakeDns(
            {
                "_dmarc.good.example": ["v=DMARC1; p=reject; rua=mailto:d@good.example"],
                "selector1._domainkey.good.example": [
                    "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC"
                ],
                "google._domainkey.good.example": ["v=DKIM1; p="],  # revoked key: not published
            }
        ),
    )
    assert published.dmarc.published and published.dkim.published and published.ready_for_bulk
    assert published.dkim.records == ["selector1._domainkey.good.example"]
    missing = await check_domain("bare.example", FakeDns({"_dmarc.bare.example": ["v=spf1 -all"]}))
    assert not missing.dmarc.published and not missing.dkim.published and not missing.ready_for_bulk
    assert "DMARC and DKIM" in missing.advice


async def test_domain_check_endpoint_uses_the_synced_address(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    dns = FakeDns({"_dmarc.acme.example": ["v=DMARC1; p=none"]})
    async with running_app(
        create_app(world.settings(), clock=world.clock, resolver=dns)
    ) as service:
        api = world.caller(service, me.user)
        assert (await api.get("/v1/mail-sync/domain-check")).status_code == 404
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        check = (await api.get("/v1/mail-sync/domain-check")).json()
    assert (
        check["domain"] == "acme.example"
        and check["dmarc"]["published"]
        and not check["dkim"]["published"]
    )


async def test_error_log_pages_newest_first_and_is_the_callers_own(world) -> None:  # type: ignore[no-untyped-def]
    me = world.account()
    async with running_app(world.app()) as service:
        api = world.caller(service, me.user)
        assert (await api.put("/v1/mail-sync", json=world.connect_body(me))).status_code == 200
        mailbox_id = (await api.get("/v1/mail-sync")).json()["id"]
        await world.sql_write(
            "INSERT INTO sync.mailbox_error (id, company_id, mailbox_id, occurred_at, kind, message, fix) "
            "SELECT gen_random_uuid(), :company, :mailbox, now() - make_interval(mins => n), 'timeout', "
            "'attempt ' || n, 'wait' FROM generate_series(1, 7) AS n",
            {"company": world.company_id, "mailbox": uuid.UUID(mailbox_id)},
        )
        first = (await api.get("/v1/mail-sync/errors", params={"limit": 5})).json()
        second = (
            await api.get(
                "/v1/mail-sync/errors", params={"limit": 5, "cursor": first["next_cursor"]}
            )
        ).json()
        messages = [e["message"] for e in first["items"] + second["items"]]
        assert messages == [f"attempt {n}" for n in range(1, 8)]
        assert second["next_cursor"] is None
        assert (
            await api.get("/v1/mail-sync/errors", params={"cursor": "bm9wZQ"})
        ).status_code == 400
        stranger = world.caller(
            service, make_identity("salesperson", company_id=uuid.uuid4(), user_id=me.user.user_id)
        )
        assert (await stranger.get("/v1/mail-sync/errors")).json()["items"] == []
        assert (await stranger.get("/v1/mail-sync")).status_code == 404


def test_presets_fill_hosts_and_bluehost_takes_the_users_domain() -> None:
    from leadline_sync.mailbox.connect import choose
    from leadline_sync.mailbox.schemas import ConnectRequest

    bluehost = choose(
        ConnectRequest(provider="bluehost", address="Sam@MyShop.example", password="pw")
    )
    assert (bluehost.imap.login.host, bluehost.imap.login.port, bluehost.imap.login.tls) == (
        "mail.myshop.example",
        993,
        "implicit",
    )
    assert (
        bluehost.smtp.login.host == "mail.myshop.example"
        and bluehost.imap.login.username == "sam@myshop.example"
    )
    godaddy = choose(
        ConnectRequest(
            provider="godaddy",
            address="sam@shop.example",
            password="pw",
            imap={"username": "sam", "password": "imap-only"},
        )
    )
    assert godaddy.imap.login.tls == "starttls" and godaddy.imap.login.username == "sam"
    assert godaddy.imap.login.password == "imap-only" and godaddy.smtp.login.password == "pw"
