"""The historical-sync benchmarks' reference: ``mbsync`` (Debian's isync) pulling INBOX and Sent of
one Dovecot mailbox into a Maildir, as durable as asked (``FSync yes`` is as durable as a PostgreSQL
commit)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


def mbsync_seconds(
    *, port: int, user: str, password: str, cafile: str, work: Path, fsync: bool
) -> tuple[float, int]:
    """Seconds mbsync took to download both folders, and how many messages it stored."""
    store = work / f"mbsync-{'fsync' if fsync else 'nofsync'}"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    config = work / "mbsyncrc"
    config.write_text(f"""FSync {"yes" if fsync else "no"}

IMAPAccount bench
Host localhost
Port {port}
User {user}
Pass {password}
SSLType IMAPS
CertificateFile {cafile}

IMAPStore remote
Account bench

MaildirStore local
Path {store}/
Inbox {store}/INBOX

Channel bench
Far :remote:
Near :local:
Patterns INBOX Sent
Create Near
Sync Pull
SyncState *
""")
    started = time.perf_counter()
    subprocess.run(["mbsync", "-q", "-c", str(config), "-a"], check=True, timeout=900)
    elapsed = time.perf_counter() - started
    downloaded = sum(1 for p in store.rglob("*") if p.is_file() and p.parent.name in ("cur", "new"))
    shutil.rmtree(store, ignore_errors=True)
    return elapsed, downloaded
