"""Historical sync on the user's path, against mbsync and stdlib imaplib on the same mailbox, with
its breakdown.

    uv run python bench/sync/history.py [--messages 5000] [--rounds 3] [--cases all,rare] [--source DIR]

The suite runs as ``make run`` runs it (``deploy/run.py``: the gateway, the five services,
PostgreSQL with fsync), on a PostgreSQL and NATS of the bench's own, with bench/send's mail servers
(Dovecot with implicit TLS; an SMTP server that delivers the address proof into the mailbox's
INBOX).  The mailbox is written into Dovecot as Maildir files once (the issue's shape: median ~8 KB,
5% with 50–300 KB attachments, 60% INBOX, 40% Sent, dated one every 7 minutes up to now), and every
round:

- references: ``mbsync`` (Debian isync) pulling INBOX and Sent into a fresh Maildir with ``FSync
  yes`` (as durable as a PostgreSQL commit) and with ``FSync no``; stdlib ``imaplib`` fetching only
  the headers the sync reads (``UID FETCH a:b (BODY.PEEK[HEADER.FIELDS (...)])`` in batches of
  1,000) of both folders;
- per case, a new company: its administrator creates 20 leads through the gateway, then connects the
  mailbox (``PUT /v1/mail-sync``); the clock runs from the PUT until every lead mail is an event on
  its lead's timeline (read from the lead service's table), with the time to the first lead mail on
  a timeline and to the newest one.  ``all``: every message is with one of the 20 leads; ``rare``:
  every 100th.  The mailbox is disconnected after its case.

Ratios: mbsync ``FSync yes`` time / ours (≥ 1 is faster than mbsync), imaplib's header fetch / the
``rare`` case (the header scan).  The breakdown is what the services report about a case (their
Prometheus counters ``leadline_sync_stage_seconds_total``, ``leadline_outbox_relay_seconds_total``
and ``leadline_events_apply_seconds_total``, scraped before and after): the seconds of each stage
summed over the run, and its share.  Stages overlap (the scan prepares a batch while the previous
one commits), so their sum exceeds the wall time.  The peak RSS of the sync service's process tree
(parser processes included) is sampled every 0.2 s.
"""  # noqa: E501

from __future__ import annotations

import argparse
import asyncio
import base64
import imaplib
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import aiohttp
import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "send"))
from common import cpu_by_command
from mbsync import mbsync_seconds
from user_path import (
    ADDRESS,
    PASSWORD,
    MailServers,
    Suite,
    mail_servers,
    profile_summary,
    profiled,
    scrape,
    suite,
)

from leadline_kit.db import asyncpg_dsn
from leadline_kit.infra import NatsServer, PostgresServer, ensure_service_user, free_port, is_root
from leadline_kit.testing.fixtures import create_database
from leadline_mail.mime import SUMMARY_FIELDS

LEADS = 20
WORDS = (
    "deal proposal pricing meeting contract renewal invoice quarter demo follow up question thanks "
    "schedule call team budget timeline review offer discount support onboarding"
).split()
PROCESSES = (
    "leadline_gateway",
    "leadline_lead",
    "leadline_quota",
    "leadline_sync",
    "leadline_send",
    "postgres",
)
# the fields the sync's header scan fetches and reads
HEADER_FIELDS = f"(BODY.PEEK[HEADER.FIELDS ({' '.join(SUMMARY_FIELDS).upper()})])"
# (what, counter, label filter) of the breakdown, in a message's order; the last is the lead
# service's
STAGES = [
    ("IMAP header fetch", "leadline_sync_stage_seconds_total", 'stage="imap_headers"'),
    ("header parse", "leadline_sync_stage_seconds_total", 'stage="header_parse"'),
    ("match (directory lookup, R5/R6)", "leadline_sync_stage_seconds_total", 'stage="match"'),
    ("IMAP body fetch", "leadline_sync_stage_seconds_total", 'stage="imap_bodies"'),
    ("bounce check", "leadline_sync_stage_seconds_total", 'stage="bounce_parse"'),
    ("MIME parse", "leadline_sync_stage_seconds_total", 'stage="mime_parse"'),
    ("events built", "leadline_sync_stage_seconds_total", 'stage="events"'),
    (
        "sync commit (allowance, rows, outbox)",
        "leadline_sync_stage_seconds_total",
        'stage="commit"',
    ),
    ("outbox relay + JetStream publish", "leadline_outbox_relay_seconds_total", 'service="sync"'),
    ("lead apply (consumer, timeline rows)", "leadline_events_apply_seconds_total", ""),
]


def counterpart(i: int) -> tuple[str, str]:
    """(lead address of message ``i``, the address only the ``rare`` case's leads have)."""
    k = i % LEADS
    if i % 100 == 0:
        return f"rare{(i // 100) % LEADS}@prospect.example", "rare"
    return f"lead{k}@customer{k}.example", "all"


def write_mailbox(home: Path, count: int) -> tuple[int, int, int]:
    """The mailbox as Maildir files (INBOX and .Sent), UIDs in date order; (messages, bytes, median
    size).

    Messages are put together as bytes from a prepared text and a few prepared attachments (building
    50,000 ``EmailMessage`` objects took minutes)."""
    rng = random.Random(20)
    text = "\r\n".join(
        " ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(40_000)
    ).encode()
    attachments = [
        base64.encodebytes(rng.randbytes(rng.randint(37_000, 225_000))).replace(b"\n", b"\r\n")
        for _ in range(16)
    ]
    now = datetime.now(UTC).replace(microsecond=0)
    folders = {"INBOX": home / "Maildir", "Sent": home / "Maildir" / ".Sent"}
    for folder in folders.values():
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
    sizes: list[int] = []
    for i in range(count):
        lead, _ = counterpart(i)
        sent = i % 5 in (1, 3)  # 40% Sent
        size = max(400, int(rng.lognormvariate(8.9, 0.6)))
        at = rng.randrange(0, len(text) - size)
        at = text.index(b"\r\n", at) + 2
        body = text[at : at + size]
        head = (
            f"From: {ADDRESS if sent else f'Lead {i % LEADS} <{lead}>'}\r\n"
            f"To: {lead if sent else ADDRESS}\r\n"
            f"Subject: Re: {rng.choice(WORDS)} {i}\r\n"
            f"Date: {format_datetime(now - timedelta(minutes=7 * (count - i)))}\r\n"
            f"Message-ID: <bench-{i}@acme.example>\r\nMIME-Version: 1.0\r\n"
        ).encode()
        if i % 20 == 9:  # 5%: a 50–300 KB attachment
            raw = (
                head + b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
                b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + b"\r\n--b1\r\n"
                b"Content-Type: application/pdf\r\nContent-Disposition: attachment; "
                b'filename="proposal.pdf"\r\n'
                b"Content-Transfer-Encoding: base64\r\n\r\n"
                + rng.choice(attachments)
                + b"--b1--\r\n"
            )
        else:
            raw = head + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + b"\r\n"
        sizes.append(len(raw))
        # the time in the name orders the UIDs
        name = f"{1_700_000_000 + i}.M{i}P1.bench,S={len(raw)}:2,S"
        (folders["Sent" if sent else "INBOX"] / "cur" / name).write_bytes(raw)
    if is_root():
        user = ensure_service_user()
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(home)], check=True)
    sizes.sort()
    return count, sum(sizes), sizes[len(sizes) // 2]


def mbsync(servers: MailServers, work: Path, fsync: bool) -> float:
    elapsed, _ = mbsync_seconds(
        port=servers.imap_port,
        user=ADDRESS,
        password=PASSWORD,
        cafile=servers.ca_file,
        work=work,
        fsync=fsync,
    )
    return elapsed


def imaplib_header_seconds(servers: MailServers) -> float:
    started = time.perf_counter()
    imap = imaplib.IMAP4_SSL("localhost", servers.imap_port, ssl_context=servers.tls())
    imap.login(ADDRESS, PASSWORD)
    for folder in ("INBOX", "Sent"):
        typ, data = imap.select(folder, readonly=True)
        assert typ == "OK", data
        _, found = imap.uid("SEARCH", "ALL")
        uids = [int(u) for u in found[0].split()]
        for start in range(0, len(uids), 1000):
            part = uids[start : start + 1000]
            typ, _ = imap.uid("FETCH", f"{part[0]}:{part[-1]}", HEADER_FIELDS)
            assert typ == "OK"
    imap.logout()
    return time.perf_counter() - started


def tree_memory_kib(root: str, marker: str) -> tuple[int, int]:
    """(RSS, PSS) summed over every process whose command line holds ``root`` and whose environment
    holds ``marker`` (the sync service under this bench's data folder), and their descendants (the
    parser processes).  RSS counts a page shared by two processes twice; PSS shares it out."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    top: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        pid = int(entry.name)
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[pid] = int(fields.get("PPid", "0"))
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
        if root in command and marker.encode() in environ:
            top.add(pid)
    ours = set(top)
    grown = True
    while grown:
        found = {pid for pid, parent in parents.items() if parent in ours} - ours
        grown = bool(found)
        ours |= found
    pss = 0
    for pid in ours:
        try:
            rollup = (Path("/proc") / str(pid) / "smaps_rollup").read_text()
        except OSError:
            continue
        pss += sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return sum(rss.get(pid, 0) for pid in ours), pss


@dataclass
class CaseRun:
    first: float  # PUT to the first lead mail on a timeline
    newest: float  # to the newest lead mail (the mailbox's last message with a lead)
    complete: float  # to every lead mail
    put: float  # PUT's answer
    stages: dict[str, float]
    cpu: dict[str, float]
    rss_kib: int  # peak of the sync process tree
    pss_kib: int
    profile: dict[str, list[str]]  # service → its py-spy summary (--profile)


@dataclass
class Round:
    mbsync_fsync: float
    mbsync_nofsync: float
    imaplib_headers: float
    cases: dict[str, CaseRun] = field(default_factory=dict)


async def company(client: httpx.AsyncClient, found: Suite, name: str) -> dict[str, str]:
    created = await client.post(
        "/v1/companies",
        headers={"Authorization": f"Bearer {found.bootstrap_token}"},
        json={"name": name, "domains": ["acme.example"], "administrator": {"email": ADDRESS}},
    )
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['api_key']['key']}"}


async def run_case(
    found: Suite,
    servers: MailServers,
    database_url: str,
    case: str,
    messages: int,
    number: int,
    timeout: float,
    profile: Path | None,
) -> CaseRun:
    expected = sum(1 for i in range(messages) if case == "all" or counterpart(i)[1] == "rare")
    newest = max(i for i in range(messages) if case == "all" or counterpart(i)[1] == "rare")
    sync_url, lead_url = found.port(3), found.port(1)
    async with (
        httpx.AsyncClient(base_url=found.gateway, timeout=120) as client,
        aiohttp.ClientSession() as metrics,
    ):
        key = await company(client, found, f"bench {case} {number}")
        for k in range(LEADS):
            addresses = [f"rare{k}@prospect.example"] + (
                [f"lead{k}@customer{k}.example"] if case == "all" else []
            )
            made = await client.post(
                "/v1/leads", headers=key, json={"name": f"Lead {k}", "addresses": addresses}
            )
            assert made.status_code == 201, made.text
        company_id = (await client.get("/v1/company", headers=key)).json()["id"]
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        before = {
            url: await scrape(metrics, [url], found.metrics_token) for url in (sync_url, lead_url)
        }
        with profiled(profile, found.marker, f"{case}-{number}") as stacks:
            cpu_before = cpu_by_command(PROCESSES, found.marker)
            peak = peak_pss = 0
            started = time.perf_counter()
            put = asyncio.create_task(
                client.put(
                    "/v1/mail-sync",
                    headers=key,
                    json=servers.connect_body(),
                )
            )
            put_at = first = newest_at = None
            deadline = started + timeout
            sampled = 0.0
            try:
                while time.perf_counter() < deadline:
                    if put_at is None and put.done():
                        response = put.result()
                        assert response.status_code in (200, 201), response.text
                        put_at = time.perf_counter() - started
                    stored = await conn.fetchval(
                        "SELECT count(*) FROM lead.timeline_event WHERE company_id = $1", company_id
                    )
                    now = time.perf_counter()
                    if stored and first is None:
                        first = now - started
                    if newest_at is None and stored:
                        if await conn.fetchval(
                            (
                                "SELECT count(*) FROM lead.timeline_event WHERE company_id = $1 "
                                "AND message_id = $2"
                            ),
                            company_id,
                            f"<bench-{newest}@acme.example>",
                        ):
                            newest_at = now - started
                    if now - sampled > 0.2:
                        rss, pss = tree_memory_kib("leadline_sync", found.marker)
                        peak, peak_pss, sampled = max(peak, rss), max(peak_pss, pss), now
                    if stored >= expected and put_at is not None:
                        break
                    await asyncio.sleep(0.02)
                complete = time.perf_counter() - started
                if stored < expected or put_at is None:
                    print(
                        (
                            f"case {case}: {stored} of {expected} lead mails on timelines after "
                            f"{timeout:.0f} s"
                        ),
                        flush=True,
                    )
                    complete = float("nan")
            finally:
                await conn.close()
        after = {
            url: await scrape(metrics, [url], found.metrics_token) for url in (sync_url, lead_url)
        }
        cpu_after = cpu_by_command(PROCESSES, found.marker)
        disconnected = await client.delete("/v1/mail-sync", headers=key)
        assert disconnected.status_code in (200, 202, 204), disconnected.text
    stages: dict[str, float] = {}
    for n, (what, counter, labels) in enumerate(STAGES):
        url = lead_url if n == len(STAGES) - 1 else sync_url
        stages[what] = sum(
            value - before[url].get(name, 0.0)
            for name, value in after[url].items()
            if name.startswith(counter + "{") and (not labels or labels in name)
        )
    assert first is not None and put_at is not None
    return CaseRun(
        first,
        float("nan") if newest_at is None else newest_at,
        complete,
        put_at,
        stages,
        {k: cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0) for k in PROCESSES},
        peak,
        peak_pss,
        {
            name: profile_summary(path, messages)
            for name, path in stacks.items()
            if name in ("sync", "lead")
        },
    )


def span(values: list[float], digits: int = 2) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}–{max(values):.{digits}f})"
    )


def report(
    args: argparse.Namespace, rounds: list[Round], shape: tuple[int, int, int], loads: list[str]
) -> None:
    count, size, median = shape
    print()
    print("== Leadline historical sync on the user's path (bench/sync/history.py) ==")
    print(
        f"mailbox: {count} messages, {size / 2**20:.0f} MB, median {median / 1024:.1f} KB; rounds: "
        f"{len(rounds)}"
    )
    print("load (uptime) at each round: " + " | ".join(loads))
    print("medians (lowest–highest) of the rounds, seconds:")
    print(f"  mbsync FSync yes: {span([r.mbsync_fsync for r in rounds])}")
    print(f"  mbsync FSync no:  {span([r.mbsync_nofsync for r in rounds])}")
    print(f"  imaplib, header fields only: {span([r.imaplib_headers for r in rounds])}")
    print()
    print(
        "| case | mbsync (FSync yes) | Leadline: PUT until every lead mail is on its timeline | "
        "ratio (mbsync / Leadline) | first lead mail | newest lead mail | PUT answered | sync tree "
        "peak RSS (PSS) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        runs = [r.cases[case] for r in rounds]
        print(
            f"| {case} | {span([r.mbsync_fsync for r in rounds])} s | "
            f"{span([c.complete for c in runs])} s | "
            f"{span([r.mbsync_fsync / r.cases[case].complete for r in rounds])} | "
            f"{span([c.first for c in runs])} s"
            f" | {span([c.newest for c in runs])} s | {span([c.put for c in runs])} s | "
            f"{span([c.rss_kib / 1024 for c in runs], 0)} MiB "
            f"({span([c.pss_kib / 1024 for c in runs], 0)}) |"
        )
        if case == "rare":
            print(
                f"| rare: header scan vs imaplib (imaplib / Leadline) | | | "
                f"{span([r.imaplib_headers / r.cases[case].complete for r in rounds])} | | | | |"
            )
        print(
            f"| {case}: vs mbsync FSync no | | | "
            f"{span([r.mbsync_nofsync / r.cases[case].complete for r in rounds])}"
            " | | | | |"
        )
    for case in args.cases:
        runs = [r.cases[case] for r in rounds]
        print()
        print(
            f"breakdown, case {case} (seconds summed over the run, median of the rounds; share of "
            f"the sum):"
        )
        totals = [sum(c.stages.values()) for c in runs]
        for what, _, _ in STAGES:
            values = [c.stages[what] for c in runs]
            share = statistics.median(
                c.stages[what] / t if t else 0.0 for c, t in zip(runs, totals, strict=True)
            )
            rounds_in_order = " / ".join(f"{v:.2f}" for v in values)
            print(
                f"  {what:40s} {span(values)} s  {100 * share:5.1f}%   by round: {rounds_in_order}"
            )
        print(
            f"  {'sum of stages':40s} {span(totals)} s; wall time "
            f"{span([c.complete for c in runs])} s"
        )
        print(f"  {'wall time by round':40s} {' / '.join(f'{c.complete:.2f}' for c in runs)} s")
        cpu = " ".join(f"{k} {statistics.median(c.cpu[k] for c in runs):.1f}" for k in PROCESSES)
        print(f"  CPU seconds by process (median): {cpu}")
        for name, lines in runs[-1].profile.items():
            print(f"  py-spy, {name} service (the last round; per message of the mailbox):")
            print("\n".join(lines))
    cases = ",".join(args.cases)
    print(
        f"command: uv run python bench/sync/history.py --messages {args.messages} --rounds "
        f"{args.rounds} --cases {cases} --references {','.join(args.references)}"
    )


async def bench(args: argparse.Namespace) -> None:
    rounds: list[Round] = []
    loads: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp_name:
        tmp = Path(tmp_name)
        postgres = PostgresServer(tmp / "postgres", free_port())
        nats_server = NatsServer(tmp / "nats", free_port())
        postgres.start()
        nats_server.start()
        try:
            database_url = await create_database(postgres, "leadline")
            with mail_servers(tmp) as servers:
                started = time.perf_counter()
                home = tmp / "dovecot" / "home" / ADDRESS
                shape = write_mailbox(home, args.messages)
                print(
                    f"wrote {args.messages} messages as Maildir files in "
                    f"{time.perf_counter() - started:.0f} s"
                )
                # Dovecot indexes the folders once, before any clock runs
                imaplib_header_seconds(servers)
                with suite(
                    tmp, database_url, nats_server.url, servers, 1, None, args.source
                ) as found:
                    for number in range(args.rounds):
                        load = subprocess.run(
                            ["uptime"], capture_output=True, text=True
                        ).stdout.strip()
                        loads.append(load.split("load average:")[-1].strip())
                        nan = float("nan")  # a reference left out (--references)
                        result = Round(
                            mbsync(servers, tmp, fsync=True)
                            if "mbsync-fsync" in args.references
                            else nan,
                            mbsync(servers, tmp, fsync=False)
                            if "mbsync" in args.references
                            else nan,
                            imaplib_header_seconds(servers)
                            if "imaplib" in args.references
                            else nan,
                        )
                        for case in args.cases:
                            result.cases[case] = await run_case(
                                found,
                                servers,
                                database_url,
                                case,
                                args.messages,
                                number,
                                args.case_timeout,
                                args.profile,
                            )
                        rounds.append(result)
                        print(
                            f"round {number + 1} (load {loads[-1]}): mbsync "
                            f"{result.mbsync_fsync:.2f} s / {result.mbsync_nofsync:.2f} s (FSync "
                            f"no), imaplib headers {result.imaplib_headers:.2f} s; "
                            + "; ".join(
                                f"{case} first {c.first:.2f} s, complete {c.complete:.2f} s, "
                                f"RSS {c.rss_kib / 1024:.0f} MiB (PSS {c.pss_kib / 1024:.0f})"
                                for case, c in result.cases.items()
                            ),
                            flush=True,
                        )
        finally:
            nats_server.stop()
            postgres.stop()
    report(args, rounds, shape, loads)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", type=lambda v: v.split(","), default=["all", "rare"])
    parser.add_argument(
        "--case-timeout", type=float, default=900.0, help="seconds a case may take at most"
    )
    parser.add_argument(
        "--references",
        type=lambda v: v.split(","),
        default=["mbsync-fsync", "mbsync", "imaplib"],
        help=(
            "which references to time (mbsync with FSync yes takes minutes for 50,000 messages "
            "here)"
        ),
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the sync and lead services per case into this folder"
    )
    parser.add_argument(
        "--source", type=Path, help="another checkout whose services run (before/after figures)"
    )
    args = parser.parse_args()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
