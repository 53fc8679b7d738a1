"""Mailbox fixtures on the session's real Dovecot: a fresh user per test."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from leadline_kit.infra import DovecotServer
from leadline_mail.imap import ImapSettings
from leadline_mail.net import parse_allowlist

LOOPBACK = parse_allowlist("127.0.0.0/8")
PASSWORD = 'pa ss"wo\\rd'  # a space, a quote and a backslash: proper quoting is needed to log in


async def resolve_to_loopback(hostname: str) -> list[str]:
    """Dovecot listens on 127.0.0.1 only; the system may also resolve "localhost" to ::1."""
    return ["127.0.0.1"]


@pytest.fixture(scope="session")
def cafile(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def user_pool(dovecot: DovecotServer) -> list[str]:
    """Users added up front: Dovecot re-reads its passwd-file at most once a second, so a user added
    right after another login may be unknown for up to a second."""
    names = [f"u{uuid.uuid4().hex[:10]}" for _ in range(40)]
    for name in names:
        dovecot.add_user(name, PASSWORD)
    time.sleep(1.1)
    return names


@pytest.fixture
def mail_user(dovecot: DovecotServer, user_pool: list[str]) -> str:
    if user_pool:
        return user_pool.pop()
    name = f"u{uuid.uuid4().hex[:10]}"
    dovecot.add_user(name, PASSWORD)
    time.sleep(1.1)
    return name


@pytest.fixture
def imap_settings(
    dovecot: DovecotServer, mail_user: str, cafile: str
) -> Callable[..., ImapSettings]:
    """Settings for the test's user over implicit TLS verified with the test CA; override any field."""

    def make(**overrides: Any) -> ImapSettings:
        values: dict[str, Any] = {
            "host": "localhost",
            "port": dovecot.tls_port,
            "tls": "implicit",
            "username": mail_user,
            "password": PASSWORD,
            "cafile": cafile,
            "allow_networks": LOOPBACK,
            "timeout": 10.0,
            "resolver": resolve_to_loopback,
        }
        values.update(overrides)
        return ImapSettings(**values)

    return make


def leaf_sha256(dovecot: DovecotServer) -> str:
    import hashlib
    import ssl

    first = dovecot.cert_pem.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first.decode())).hexdigest()


def sample_message(i: int, *, sender: str = "lead@example.com", size: int = 0) -> bytes:
    body = (f"Hello number {i}\r\n" + "x" * size).encode()
    return (
        (
            f"From: Lead {i} <{sender}>\r\nTo: me@example.org\r\nSubject: message {i}\r\n"
            f"Message-ID: <m{i}.{uuid.uuid4().hex}@example.com>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        ).encode()
        + body
        + b"\r\n"
    )


def maildir_deliver(
    dovecot: DovecotServer, user: str, messages: list[bytes], folder: str = ""
) -> None:
    """Drop messages straight into the user's Maildir (fast seeding; Dovecot indexes them on SELECT)."""
    import os

    base = dovecot.base_dir / "home" / user / "Maildir"
    target = base / folder if folder else base
    for sub in ("cur", "new", "tmp"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for i, raw in enumerate(messages):
        (target / "new" / f"{1700000000 + i}.M{i}P1.leadline").write_bytes(raw)
    owner = (dovecot.base_dir / "home").stat()
    for dirpath, _, files in os.walk(dovecot.base_dir / "home" / user):
        os.chown(dirpath, owner.st_uid, owner.st_gid)
        for f in files:
            os.chown(Path(dirpath) / f, owner.st_uid, owner.st_gid)
