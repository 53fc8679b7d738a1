"""Fetch rate of leadline_mail.imap against stdlib imaplib on the same Dovecot mailbox, in one run.

    uv run python mail/tests/bench_fetch.py [messages]

Starts its own Dovecot (kit.infra), seeds one Maildir (median ~8 KB, some
100 KB "attachments"), then times: headers (RFC822.SIZE INTERNALDATE
BODY.PEEK[HEADER]) and whole messages (BODY.PEEK[]) for every message, with
each client, and prints messages/s and the ratio ours / imaplib (aioimaplib 2.0.3 for reference
when installed), then the rate of ``parse_headers`` on the fetched headers.
"""

from __future__ import annotations

import asyncio
import imaplib
import random
import ssl
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trustme

from leadline_kit.infra import DovecotServer
from leadline_mail.imap import FetchedHeader, ImapSettings, connect_imap
from leadline_mail.mime import parse_headers
from leadline_mail.net import parse_allowlist

sys.path.insert(0, str(Path(__file__).parent))
from conftest import maildir_deliver, sample_message


def seed(count: int) -> list[bytes]:
    rng = random.Random(7)
    return [
        sample_message(i, size=100_000 if i % 50 == 0 else rng.randint(2_000, 14_000))
        for i in range(count)
    ]


def imaplib_rate(port: int, user: str, cafile: str, item: str, batch: int) -> tuple[int, float]:
    context = ssl.create_default_context(cafile=cafile)
    started = time.perf_counter()
    conn = imaplib.IMAP4_SSL("localhost", port, ssl_context=context)
    conn.login(user, "pw")
    conn.select("INBOX", readonly=True)
    _, data = conn.uid("SEARCH", "ALL")
    uids = data[0].split()
    fetched = 0
    for i in range(0, len(uids), batch):
        chunk = b",".join(uids[i : i + batch]).decode()
        _, rows = conn.uid("FETCH", chunk, item)
        fetched += sum(1 for row in rows if isinstance(row, tuple))
    conn.logout()
    return fetched, time.perf_counter() - started


async def ours_rate(port: int, user: str, cafile: str, headers: bool) -> tuple[int, float]:
    started = time.perf_counter()
    settings = ImapSettings(
        host="localhost",
        port=port,
        tls="implicit",
        username=user,
        password="pw",
        cafile=cafile,
        allow_networks=parse_allowlist("127.0.0.0/8"),
    )
    async with await connect_imap(settings) as client:
        await client.select("INBOX")
        uids = await client.uids_from(1)
        if headers:
            fetched = len(await client.fetch_headers(uids))
        else:
            fetched = len(await client.fetch_messages(uids))
    return fetched, time.perf_counter() - started


async def aioimaplib_rate(
    port: int, user: str, cafile: str, item: str, batch: int
) -> tuple[int, float]:
    """aioimaplib 2.0.3 for reference; batches of 100 because larger ones hit its RecursionError."""
    import aioimaplib

    started = time.perf_counter()
    conn = aioimaplib.IMAP4_SSL(
        "localhost", port, ssl_context=ssl.create_default_context(cafile=cafile)
    )
    await conn.wait_hello_from_server()
    await conn.login(user, "pw")
    await conn.select("INBOX")
    result = await conn.uid_search("ALL")
    uids = result.lines[0].split()
    fetched = 0
    for i in range(0, len(uids), batch):
        response = await conn.uid("fetch", b",".join(uids[i : i + batch]).decode(), item)
        fetched += sum(1 for line in response.lines if isinstance(line, bytearray))
    await conn.logout()
    return fetched, time.perf_counter() - started


async def all_headers(port: int, user: str, cafile: str) -> list[FetchedHeader]:
    settings = ImapSettings(
        host="localhost",
        port=port,
        tls="implicit",
        username=user,
        password="pw",
        cafile=cafile,
        allow_networks=parse_allowlist("127.0.0.0/8"),
    )
    async with await connect_imap(settings) as client:
        await client.select("INBOX")
        return await client.fetch_headers(await client.uids_from(1))


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 6000
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp:
        cafile = str(Path(tmp) / "ca.pem")
        ca.cert_pem.write_to_path(cafile)
        server = DovecotServer(
            Path(tmp) / "dovecot",
            cert.cert_chain_pems[0].bytes() + ca.cert_pem.bytes(),
            cert.private_key_pem.bytes(),
        )
        server.start()
        try:
            user = f"bench{uuid.uuid4().hex[:6]}"
            server.add_user(user, "pw")
            time.sleep(1.1)
            messages = seed(count)
            print(f"{count} messages, {sum(map(len, messages)) / 1e6:.1f} MB")
            maildir_deliver(server, user, messages)
            imaplib_rate(
                server.tls_port, user, cafile, "(UID)", 1000
            )  # let Dovecot build its index once
            # The machine is shared: alternate the clients and keep each one's best of three runs.
            for label, item, header_only in (
                ("headers", "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER])", True),
                ("messages", "(UID INTERNALDATE BODY.PEEK[])", False),
            ):
                ref_times, our_times = [], []
                for _ in range(3):
                    ref_n, ref_t = imaplib_rate(server.tls_port, user, cafile, item, 200)
                    our_n, our_t = asyncio.run(
                        ours_rate(server.tls_port, user, cafile, header_only)
                    )
                    assert ref_n == our_n == count, (ref_n, our_n)
                    ref_times.append(ref_t)
                    our_times.append(our_t)
                ref_t, our_t = min(ref_times), min(our_times)
                try:
                    aio_n, aio_t = asyncio.run(
                        aioimaplib_rate(server.tls_port, user, cafile, item, 100)
                    )
                    aio = f"   aioimaplib (batches of 100): {aio_n / aio_t:6.0f}/s"
                except ImportError:
                    aio = ""
                print(
                    f"{label:9s} imaplib (batches of 200): {count / ref_t:6.0f}/s   "
                    f"leadline_mail: {count / our_t:6.0f}/s   ratio {ref_t / our_t:.2f}{aio}"
                )
            headers = asyncio.run(all_headers(server.tls_port, user, cafile))
            started = time.perf_counter()
            for header in headers:
                parse_headers(header.header)
            print(
                f"parse_headers on those headers: {len(headers) / (time.perf_counter() - started):.0f}/s"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
