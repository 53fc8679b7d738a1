"""Memory of the completeness audit on a large folder (issue 25).

    uv run python bench/sync/audit_memory.py [--messages 1000000] [--gap 1000]

A Dovecot INBOX of ``--messages`` messages is written directly as Maildir
files (no APPEND: a million take a minute).  The sync database records every
UID examined except a gap of ``--gap`` UIDs in the middle, as a lost batch
would leave it.  Then, in this process, over one IMAP connection:

- reference: the listing the sync used before the audit, ``uids_from(1)``,
  every UID of the folder at once;
- the audit (``leadline_sync.sync.audit.unexamined``): windows of 20,000
  UIDs, recorded as ranges, yielding the never-examined ones.

The audit runs first (memory the reference freed could otherwise serve it
without growing RSS).  Extra RSS = peak RSS while it runs (``VmHWM`` after ``clear_refs``) minus the
RSS before.  Prints both, their ratio, the gap found, and the seconds taken.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import trustme
from sqlalchemy import insert, text

from leadline_kit import infra
from leadline_kit.db import Database
from leadline_kit.infra import (
    DovecotServer,
    PostgresServer,
    ensure_service_user,
    free_port,
    is_root,
)
from leadline_kit.migrations import upgrade
from leadline_kit.testing.fixtures import create_database
from leadline_mail.imap import ImapSettings, connect_imap
from leadline_mail.net import parse_allowlist
from leadline_sync.models import examined_range, mailbox
from leadline_sync.sync import audit


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def write_maildir(home: Path, count: int) -> None:
    cur = home / "Maildir" / "cur"
    for sub in ("cur", "new", "tmp"):
        (home / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
    body = (
        b"From: a@else.example\r\nTo: me@acme.example\r\nSubject: %d\r\n"
        b"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\nx\r\n"
    )
    for i in range(count):
        # the time in the name orders the files, so UIDs follow i
        with open(cur / f"{1_700_000_000 + i}.M{i}P1.bench,S={len(body % i)}:2,S", "wb") as f:
            f.write(body % i)
    if is_root():
        user = ensure_service_user()
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(home)], check=True)


def move_maildir(maildir: Path, home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    maildir.rename(home / "Maildir")  # with Dovecot's index and UID list: the next SELECT is quick
    if is_root():
        user = ensure_service_user()
        os.chown(home, user.pw_uid, user.pw_gid)


async def measure(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="audit-memory-"))
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    postgres = PostgresServer(base / "pg", free_port(), fast_unsafe=True)
    dovecot = DovecotServer(
        base / "dovecot", cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes()
    )
    # Dovecot's imap process needs more than its default 256 MB to index a million messages
    infra.DOVECOT_CONF += "service imap {{\n  vsz_limit = 4G\n}}\n"
    postgres.start()
    dovecot.start()
    try:
        address = "big@acme.example"
        dovecot.add_user(address, "pw")
        started = time.perf_counter()
        home = dovecot.base_dir / "home" / address
        if args.reuse:  # the Maildir of an earlier run (writing a million files takes minutes)
            move_maildir(Path(args.reuse), home)
        else:
            write_maildir(home, args.messages)
        print(f"{args.messages} maildir files ready in {time.perf_counter() - started:.1f} s")
        url = await create_database(postgres, "audit_memory")
        await upgrade("leadline_sync", url)
        db = Database(url, "sync", pool_size=2)
        mailbox_id = uuid.uuid4()
        ca_file = base / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        client = await connect_imap(
            ImapSettings(
                host="127.0.0.1",
                port=dovecot.port,
                tls="starttls",
                username=address,
                password="pw",
                cafile=str(ca_file),
                allow_networks=parse_allowlist("127.0.0.0/8"),
                timeout=600,
            )
        )
        started = time.perf_counter()
        status = await client.select("INBOX")
        print(
            f"SELECT of {status.exists} messages in {time.perf_counter() - started:.1f} s (Dovecot "
            f"indexes)"
        )
        low = args.messages // 2
        async with db.session() as session:
            await session.execute(
                insert(mailbox).values(
                    id=mailbox_id,
                    company_id=uuid.uuid4(),
                    user_id=uuid.uuid4(),
                    address=address,
                    provider="custom",
                    smtp_use="general",
                    status="enabled",
                    imap_host="127.0.0.1",
                    imap_port=dovecot.port,
                    imap_tls="starttls",
                    imap_username=address,
                    smtp_host="127.0.0.1",
                    smtp_port=25,
                    smtp_tls="starttls",
                    smtp_username=address,
                    connected_at=text("now()"),
                )
            )
            await session.execute(
                insert(examined_range),
                [
                    {
                        "mailbox_id": mailbox_id,
                        "folder": "inbox",
                        "uidvalidity": status.uidvalidity,
                        "reason": "no_lead",
                        "first_uid": first,
                        "last_uid": last,
                    }
                    for first, last in ((1, low - 1), (low + args.gap, status.uidnext - 1))
                ],
            )

        results: dict[str, tuple[float, float]] = {}
        # the audit first: memory the reference freed would otherwise serve it without growing RSS
        for name in ("audit: unexamined()", "reference: uids_from(1)"):
            await asyncio.sleep(0)
            before = rss_kib("VmRSS")
            reset_peak()
            started = time.perf_counter()
            if name.startswith("reference"):
                uids = await client.uids_from(1)
                found = len(uids)
                del uids
            else:
                found = 0
                async for missing in audit.unexamined(
                    client,
                    db,
                    mailbox_id,
                    "inbox",
                    status.uidvalidity,
                    status.uidnext - 1,
                    status.uidnext,
                ):
                    found += len(missing)
            seconds = time.perf_counter() - started
            extra = (rss_kib("VmHWM") - before) / 1024
            results[name] = (extra, seconds)
            print(f"{name}: {found} UIDs, extra RSS {extra:.1f} MiB, {seconds:.1f} s")
        (ours, _), (ref, _) = results.values()
        print(
            f"ratio audit/reference extra RSS: {ours / ref:.2f}"
            if ref > 0
            else "reference used no memory"
        )
        await client.logout()
        await db.dispose()
    finally:
        dovecot.stop()
        postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--gap", type=int, default=1000)
    parser.add_argument("--reuse", help="a Maildir directory written by an earlier run, moved in")
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
