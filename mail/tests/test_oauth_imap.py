"""IMAP sign-in with an OAuth2 access token against a real Dovecot whose ``oauth2`` passdb asks a local
authorization server (RFC 7662 introspection) about each token: OAUTHBEARER (RFC 7628) and XOAUTH2."""

from __future__ import annotations

import asyncio
import base64

import pytest

from leadline_kit.infra import DovecotServer
from leadline_kit.testing.oauth import FakeOAuthProvider
from leadline_mail.imap import ImapSettings, connect_imap
from leadline_mail.net import MailConnectionError
from leadline_mail.sasl import choose_mechanism, initial_response

from .conftest import LOOPBACK, resolve_to_loopback


@pytest.fixture(scope="session")
def provider(oauth_provider: FakeOAuthProvider) -> FakeOAuthProvider:
    return oauth_provider


def token_for(provider: FakeOAuthProvider, address: str) -> str:
    return provider.access_token_for(address)


def settings(
    dovecot: DovecotServer, cafile: str, address: str, token: str, **overrides: object
) -> ImapSettings:
    values: dict[str, object] = dict(
        host="localhost",
        port=dovecot.tls_port,
        tls="implicit",
        username=address,
        password="",
        access_token=token,
        cafile=cafile,
        allow_networks=LOOPBACK,
        timeout=10.0,
        resolver=resolve_to_loopback,
    )
    values.update(overrides)
    return ImapSettings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
async def test_access_token_signs_in(
    mechanism: str, provider: FakeOAuthProvider, oauth_dovecot: DovecotServer, cafile: str
) -> None:
    address = f"alice-{mechanism.lower()}@acme.example"
    client = await connect_imap(
        settings(
            oauth_dovecot,
            cafile,
            address,
            token_for(provider, address),
            sasl_mechanisms=(mechanism,),
        )
    )
    try:
        assert (await client.find_sync_folders())["inbox"] == "INBOX"
    finally:
        await client.logout()
    for _ in range(50):  # Dovecot's log writer may lag a little behind the login
        if (
            f"user=<{address}>, method={mechanism}"
            in (oauth_dovecot.base_dir / "dovecot.log").read_text()
        ):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"no {mechanism} login of {address} in Dovecot's log")


async def test_starttls_then_token_without_sasl_ir(
    provider: FakeOAuthProvider, oauth_dovecot: DovecotServer, cafile: str
) -> None:
    address = "bob@acme.example"
    client = await connect_imap(
        settings(
            oauth_dovecot,
            cafile,
            address,
            token_for(provider, address),
            port=oauth_dovecot.port,
            tls="starttls",
        )
    )
    try:
        client.capabilities = client.capabilities - {"SASL-IR"}  # the next sign-in waits for "+"
        assert "INBOX" in {f.name for f in await client.list_folders()}
    finally:
        await client.logout()


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
async def test_refused_tokens_are_oauth_refused(
    mechanism: str, provider: FakeOAuthProvider, oauth_dovecot: DovecotServer, cafile: str
) -> None:
    # one refusal each: Dovecot makes every further failure from the same address wait longer
    address = f"carol-{mechanism.lower()}@acme.example"
    if mechanism == "XOAUTH2":
        token = token_for(provider, address)
        provider.expire_access_tokens(address)
    else:
        token = token_for(provider, "mallory@acme.example")  # a live token of another account
    with pytest.raises(MailConnectionError) as failure:
        await connect_imap(
            settings(oauth_dovecot, cafile, address, token, sasl_mechanisms=(mechanism,))
        )
    assert failure.value.kind == "oauth_refused"
    assert token not in failure.value.detail and token not in repr(failure.value)


async def test_a_server_without_oauth_is_a_clear_error(dovecot: DovecotServer, cafile: str) -> None:
    with pytest.raises(MailConnectionError) as failure:
        await connect_imap(settings(dovecot, cafile, "dave@acme.example", "tok"))
    assert failure.value.kind == "protocol" and "OAuth2" in failure.value.user_message


def test_initial_responses_and_choice() -> None:
    assert (
        base64.b64decode(initial_response("XOAUTH2", "a@b.example", "t0k"))
        == b"user=a@b.example\x01auth=Bearer t0k\x01\x01"
    )
    assert (
        base64.b64decode(
            initial_response("OAUTHBEARER", "a,=b@c.example", "t0k", "imap.c.example", 993)
        )
        == b"n,a=a=2C=3Db@c.example,\x01host=imap.c.example\x01port=993\x01auth=Bearer t0k\x01\x01"
    )
    for bad in ("t0k\r\nA1 LOGOUT", "", "t\x00"):
        with pytest.raises(ValueError):
            initial_response("XOAUTH2", "a@b.example", bad)
    assert choose_mechanism({"XOAUTH2", "OAUTHBEARER", "PLAIN"}) == "OAUTHBEARER"
    assert choose_mechanism({"XOAUTH2"}) == "XOAUTH2"
    assert choose_mechanism({"PLAIN"}) is None
    shown = repr(
        ImapSettings(
            host="h", port=1, tls="implicit", username="u", password="pw", access_token="t0k"
        )
    )
    assert "t0k" not in shown and "pw" not in shown
