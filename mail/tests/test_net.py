"""Host vetting (R24) with an injected resolver, allow-lists and certificate fingerprints."""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Sequence

import pytest
import trustme

from leadline_kit.infra import DovecotServer
from leadline_mail.net import (
    MailConnectionError,
    VettedHost,
    client_tls_context,
    fetch_certificate_sha256,
    normalize_fingerprint,
    parse_allowlist,
    vet_host,
)


def answers(*addresses: str):  # type: ignore[no-untyped-def]
    async def resolve(hostname: str) -> Sequence[str]:
        return list(addresses)

    return resolve


async def test_public_answer_is_vetted_to_that_address() -> None:
    vetted = await vet_host("IMAP.Example.COM.", resolver=answers("93.184.216.34"))
    assert vetted == VettedHost(hostname="imap.example.com", address="93.184.216.34")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",
        "fc00::5",
        "::ffff:127.0.0.1",
        "::ffff:8.8.8.8",
        "64:ff9b::a00:1",
        "2002:a00:1::1",
        "2001:0:a00:1::1",
        "ff02::1",
        "198.18.0.1",
        "192.0.2.1",
    ],
)
async def test_non_public_answers_are_refused(address: str) -> None:
    with pytest.raises(MailConnectionError) as caught:
        await vet_host("mail.example.com", resolver=answers(address))
    assert caught.value.kind == "unreachable"
    assert "not a public mail server" in caught.value.user_message
    assert address not in caught.value.user_message


async def test_a_refused_host_reads_like_a_name_that_does_not_resolve() -> None:
    async def nx(hostname: str) -> Sequence[str]:
        raise OSError("Name or service not known")

    async def nothing(hostname: str) -> Sequence[str]:
        return []

    answers_seen = set()
    for resolver in (
        answers("10.0.0.7"),
        answers("93.184.216.34", "127.0.0.1"),
        answers("not-an-ip"),
        nx,
        nothing,
    ):
        with pytest.raises(MailConnectionError) as caught:
            await vet_host("mail.internal.example", resolver=resolver)
        answers_seen.add((caught.value.kind, caught.value.user_message))
    assert len(answers_seen) == 1, answers_seen


async def test_one_private_answer_among_public_ones_refuses_the_host() -> None:
    with pytest.raises(MailConnectionError) as caught:
        await vet_host(
            "mail.example.com", resolver=answers("93.184.216.34", "10.0.0.7", "2606:4700::1")
        )
    assert caught.value.detail == "resolved to 10.0.0.7, neither public nor allowed"


async def test_ip_literal_is_checked_without_resolving() -> None:
    async def never(hostname: str) -> Sequence[str]:
        raise AssertionError("an IP literal must not be resolved")

    with pytest.raises(MailConnectionError):
        await vet_host("169.254.169.254", resolver=never)
    assert (await vet_host("8.8.8.8", resolver=never)).address == "8.8.8.8"
    assert await vet_host("[2606:4700::1]", resolver=never) == VettedHost(
        "2606:4700::1", "2606:4700::1"
    )


async def test_allow_list_opens_named_ranges_only() -> None:
    allow = parse_allowlist("127.0.0.0/8, ::1/128")
    assert (
        await vet_host("localhost", allow, resolver=answers("127.0.0.1", "::1"))
    ).address == "127.0.0.1"
    with pytest.raises(MailConnectionError):
        await vet_host("localhost", allow, resolver=answers("127.0.0.1", "10.0.0.1"))
    with pytest.raises(MailConnectionError):
        await vet_host("evil", allow, resolver=answers("::ffff:10.0.0.1"))


async def test_loopback_refused_by_default_with_the_system_resolver() -> None:
    with pytest.raises(MailConnectionError) as caught:
        await vet_host("localhost")
    assert "resolved to" in caught.value.detail


async def test_resolution_failure_is_unreachable() -> None:
    async def nx(hostname: str) -> Sequence[str]:
        raise OSError("Name or service not known")

    with pytest.raises(MailConnectionError) as caught:
        await vet_host("no-such-host.example", resolver=nx)
    assert caught.value.kind == "unreachable"
    for bad in ("", "a b", "x\r\ny", "evil\x00.com"):
        with pytest.raises(MailConnectionError):
            await vet_host(bad, resolver=answers("8.8.8.8"))


def test_parse_allowlist() -> None:
    assert [str(n) for n in parse_allowlist("127.0.0.0/8,::1/128,")] == ["127.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError):
        parse_allowlist("not-a-network")


def test_fingerprint_forms() -> None:
    hexpin = "ab" * 32
    assert normalize_fingerprint(":".join(["AB"] * 32)) == hexpin
    assert normalize_fingerprint("sha256:" + hexpin) == hexpin
    with pytest.raises(ValueError):
        normalize_fingerprint("abcd")
    with pytest.raises(ValueError):
        client_tls_context(pinned_sha256="nope")
    assert client_tls_context().verify_mode == ssl.CERT_REQUIRED


def test_connections_share_a_context_until_the_ca_file_changes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cafile = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(cafile))
    first = client_tls_context(cafile=str(cafile))
    assert client_tls_context(cafile=str(cafile)) is first
    assert client_tls_context(pinned_sha256="ab" * 32) is client_tls_context(
        pinned_sha256="cd" * 32
    )
    assert client_tls_context(pinned_sha256="ab" * 32).verify_mode == ssl.CERT_NONE
    other = trustme.CA()
    other.cert_pem.write_to_path(str(cafile))
    os.utime(cafile, ns=(os.stat(cafile).st_atime_ns, os.stat(cafile).st_mtime_ns + 1_000_000))
    renewed = client_tls_context(cafile=str(cafile))
    assert renewed is not first
    # the new CA is the one trusted
    assert [c["serialNumber"] for c in renewed.get_ca_certs()] != [
        c["serialNumber"] for c in first.get_ca_certs()
    ]


def _leaf_sha256(dovecot: DovecotServer) -> str:
    first_pem = (
        dovecot.cert_pem.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    )
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first_pem.decode())).hexdigest()


async def test_fetch_certificate_fingerprint_implicit_and_starttls(dovecot: DovecotServer) -> None:
    host = VettedHost("localhost", "127.0.0.1")
    expected = _leaf_sha256(dovecot)
    assert await fetch_certificate_sha256(host, dovecot.tls_port, "implicit", "imap") == expected
    assert await fetch_certificate_sha256(host, dovecot.port, "starttls", "imap") == expected
    with pytest.raises(MailConnectionError) as caught:
        await fetch_certificate_sha256(host, dovecot.port, "plain", "imap")
    assert caught.value.kind == "tls"


async def test_fetch_certificate_fingerprint_smtp(tls_ca: trustme.CA) -> None:
    from aiosmtpd.controller import Controller

    from leadline_kit.infra import free_port

    cert = tls_ca.issue_cert("localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    expected = hashlib.sha256(
        ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    ).hexdigest()

    class Sink:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK"

    host = VettedHost("localhost", "127.0.0.1")
    starttls = Controller(
        Sink(), hostname="127.0.0.1", port=free_port(), tls_context=server_context
    )
    implicit = Controller(
        Sink(), hostname="127.0.0.1", port=free_port(), ssl_context=server_context
    )
    plain = Controller(Sink(), hostname="127.0.0.1", port=free_port())
    for controller in (starttls, implicit, plain):
        controller.start()
    try:
        assert await fetch_certificate_sha256(host, starttls.port, "starttls", "smtp") == expected
        assert await fetch_certificate_sha256(host, implicit.port, "implicit", "smtp") == expected
        with pytest.raises(MailConnectionError) as caught:
            await fetch_certificate_sha256(host, plain.port, "starttls", "smtp")
        assert caught.value.kind == "tls" and "STARTTLS" in caught.value.user_message
    finally:
        for controller in (starttls, implicit, plain):
            controller.stop()
