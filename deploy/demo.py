"""``make demo``: watch a lead's timeline fill from a real mailbox, in about a minute.

Starts a local Dovecot (IMAP) seeded with a small mailbox and a local SMTP
server, starts the whole suite (``deploy/run.py``, with loopback mail hosts
allowed for this demo only), creates a company and a lead, connects the
mailbox as its user, and prints the Life of the Lead as the historical sync
fills it; then a new message arrives in the Inbox (live sync through IDLE) and
a Smart Mail goes out, each showing up once.
"""

from __future__ import annotations

import imaplib
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import httpx
import trustme

from leadline_kit.infra import DovecotServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import _free_block
from tests.mail_servers import SmtpServer

USER, PASSWORD = "sam@acme.example", "demo-password"
LEAD = "lee@lead.example"


def message(sender: str, to: str, subject: str, when: datetime) -> bytes:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, to, subject
    mail["Message-ID"], mail["Date"] = make_msgid(domain="demo.example"), format_datetime(when)
    mail.set_content(f"{subject}\n\nSent on {when:%A}.")
    return mail.as_bytes()


def seed(dovecot: DovecotServer) -> None:
    imap = imaplib.IMAP4("127.0.0.1", dovecot.port)
    imap.login(USER, PASSWORD)
    start = datetime.now(UTC) - timedelta(days=30)
    for day in range(0, 30, 3):
        when = start + timedelta(days=day)
        imap.append(
            "INBOX",
            None,
            None,
            message(LEAD, USER, f"Question #{day // 3 + 1} about pricing", when),
        )
        imap.append(
            "Sent",
            None,
            None,
            message(USER, LEAD, f"Re: Question #{day // 3 + 1}", when + timedelta(hours=2)),
        )
        imap.append(
            "INBOX",
            None,
            None,
            message("newsletter@other.example", USER, "Weekly digest (not a lead)", when),
        )
    imap.logout()


def show(events: list[dict[str, Any]], seen: set[str]) -> None:
    for event in reversed(events):
        if event["id"] not in seen:
            seen.add(event["id"])
            print(
                f"  {event['occurred_at'][:16]}  {event['kind']:<18} {event['subject']}", flush=True
            )


def main() -> int:
    base_dir = Path(tempfile.mkdtemp(prefix="leadline-demo-"))
    ca = trustme.CA()
    ca_file = base_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert = ca.issue_cert("localhost", "127.0.0.1")
    dovecot = DovecotServer(
        base_dir / "dovecot",
        cert.cert_chain_pems[0].bytes() + ca.cert_pem.bytes(),
        cert.private_key_pem.bytes(),
    )
    # delivers to Dovecot's users: the address proof of PUT /v1/mail-sync
    smtp = SmtpServer(ca, dovecot)
    dovecot.start()
    smtp.start()
    dovecot.add_user(USER, PASSWORD)
    smtp.add_user(USER, PASSWORD)
    seed(dovecot)
    port = _free_block(5)
    env = {
        **os.environ,
        "LEADLINE_DATA_DIR": str(base_dir / "data"),
        "LEADLINE_PORT_BASE": str(port),
        "LEADLINE_SYNC_ALLOW_NETWORKS": "127.0.0.0/8",
        "LEADLINE_SYNC_CA_FILE": str(ca_file),
        "LEADLINE_MAIL_ALLOW_NETWORKS": "127.0.0.0/8",
        "LEADLINE_MAIL_CAFILE": str(ca_file),
        "LEADLINE_SYNC_POLL_SECONDS": "5",
    }
    print("starting Leadline ...", flush=True)
    suite = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("run.py"))],
        env=env,
        stdout=(base_dir / "run.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    gateway = f"http://127.0.0.1:{port}"
    try:
        client = httpx.Client(base_url=gateway, timeout=30)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            print(
                f"Leadline did not start; see {base_dir}/run.log and {base_dir}/data/logs/",
                file=sys.stderr,
            )
            return 1
        token = dict(
            line.split("=", 1)
            for line in (base_dir / "data" / "secrets.env").read_text().splitlines()
        )
        created = client.post(
            "/v1/companies",
            headers={"Authorization": f"Bearer {token['LEADLINE_BOOTSTRAP_TOKEN']}"},
            json={"name": "Acme", "domains": ["acme.example"], "administrator": {"email": USER}},
        )
        key = {"Authorization": f"Bearer {created.json()['api_key']['key']}"}
        lead = client.post(
            "/v1/leads", headers=key, json={"name": "Lee", "addresses": [LEAD]}
        ).json()
        print(
            f"company Acme, lead Lee <{LEAD}>; connecting {USER}'s mailbox (20 mails with Lee, 10 "
            f"newsletters)"
        )
        time.sleep(1)
        client.put(
            "/v1/mail-sync",
            headers=key,
            json={
                "provider": "custom",
                "address": USER,
                "password": PASSWORD,
                "imap": {"host": "localhost", "port": dovecot.port, "use_ssl": False},
                "smtp": {"host": "localhost", "port": smtp.port, "use_ssl": False},
            },
        ).raise_for_status()
        print("Life of the Lead (oldest first as it fills):", flush=True)
        seen: set[str] = set()

        def poll(seconds: float) -> None:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                show(
                    client.get(f"/v1/leads/{lead['id']}/timeline", headers=key).json()["items"],
                    seen,
                )
                time.sleep(0.5)

        poll(10)
        print("a new mail from Lee arrives in the Inbox (live sync):", flush=True)
        imap = imaplib.IMAP4("127.0.0.1", dovecot.port)
        imap.login(USER, PASSWORD)
        imap.append("INBOX", None, None, message(LEAD, USER, "Ready to sign!", datetime.now(UTC)))
        imap.logout()
        poll(8)
        print("Smart Mail to Lee through Sam's own SMTP account:", flush=True)
        client.post(
            "/v1/messages",
            headers=key,
            json={"lead_ids": [lead["id"]], "subject": "Contract attached", "text": "Here it is."},
        ).raise_for_status()
        poll(10)
        print(f"done: {len(seen)} timeline events; the newsletter never left the sync service.")
        return 0
    finally:
        suite.terminate()
        suite.wait(30)
        smtp.stop()
        dovecot.stop()


if __name__ == "__main__":
    sys.exit(main())
