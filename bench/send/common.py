"""What both of bench/send's paths use: the message body and the CPU each kind of process used."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

BODY = ("Hello, this is a ten kilobyte Smart Mail used to measure sending throughput.\n" * 134)[
    :10_000
]


def cpu_by_command(kinds: tuple[str, ...], marker: str | None = None) -> dict[str, float]:
    """CPU seconds used so far by each kind of process of this bench (Linux /proc): the first of
    ``kinds`` found in a process's command line names it; the send service's API process (no
    delivery workers) is told apart from the delivering ones.  Counted: this process, every process
    whose command line holds ``marker`` (the bench's temporary folder: a daemonised PostgreSQL), and
    their descendants, so that the same servers of other people's runs on a shared machine are
    not."""
    tick = os.sysconf("SC_CLK_TCK")
    processes: dict[int, tuple[int, str, float]] = {}  # pid -> (parent, command line, CPU seconds)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # its own user and system time and that of its children it has reaped (a Dovecot imap
        # process that ended with its connection is gone from /proc, its CPU is in the master's)
        processes[int(entry.name)] = (
            int(fields[1]),
            command,
            sum(int(f) for f in fields[11:15]) / tick,
        )
    ours = {
        os.getpid(),
        *(pid for pid, (_, command, _) in processes.items() if marker and marker in command),
    }
    grown = True
    while grown:
        found = {pid for pid, (parent, _, _) in processes.items() if parent in ours} - ours
        grown = bool(found)
        ours |= found
    used: dict[str, float] = {}
    for pid in ours & processes.keys():
        _, command, seconds = processes[pid]
        kind = next((k for k in kinds if k in command), None)
        if kind == "leadline_send" and api_only(Path("/proc") / str(pid)):
            kind = "leadline_send API"
        if kind:
            used[kind] = used.get(kind, 0.0) + seconds
    return used


def api_only(process: Path) -> bool:
    with contextlib.suppress(OSError):
        return b"LEADLINE_SMTP_CONNECTIONS=0\0" in (process / "environ").read_bytes()
    return False
