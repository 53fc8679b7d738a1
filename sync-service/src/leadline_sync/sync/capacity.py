"""How many mailboxes one replica holds: from the machine, not a constant.

A held mailbox costs one IMAP connection (a file descriptor, two while a
reconnect overlaps the old socket's close) and some memory (about 130–140 KiB
of RSS measured, 200 KiB budgeted: ``LEADLINE_SYNC_MAILBOX_MEMORY_KIB``).  At
start the soft limit on open files is raised to the hard one; the replica then
holds as many mailboxes as both the descriptors (after a reserve for the
database pool, NATS, HTTP and the parse processes) and the memory budget
allow, and no more than ``LEADLINE_SYNC_MAX_MAILBOXES`` if that is set.

Of those, a few slots serve the mailboxes no replica holds live, in turns
(see :mod:`leadline_sync.sync.scheduler`); the others hold live (IDLE)
connections.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from leadline_sync.config import Settings

log = logging.getLogger("leadline.sync.capacity")

FDS_PER_MAILBOX = 2
FD_RESERVE = 256
"""Descriptors kept for everything else: database pool, NATS, HTTP, logs, parse-process pipes."""
NR_OPEN_DEFAULT = 1_048_576
"""Linux's default ``fs.nr_open``: the most a soft limit may be when the hard one is unlimited."""


def raise_open_files_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NR_OPEN_DEFAULT if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    return NR_OPEN_DEFAULT if soft == resource.RLIM_INFINITY else soft


class CapacityError(RuntimeError):
    """The replica could hold no mailbox at all: refused at start."""


@dataclass(frozen=True)
class Capacity:
    mailboxes: int  # held at once: live + rotation
    rotation_slots: int
    open_files: int
    by_open_files: int
    by_memory: int

    @property
    def live(self) -> int:
        return self.mailboxes - self.rotation_slots

    def describe(self) -> str:
        return (
            f"{self.mailboxes} mailboxes ({self.live} live, {self.rotation_slots} serving the rest "
            f"in turns); open files {self.open_files} allow {self.by_open_files}, the memory "
            f"budget {self.by_memory}"
        )


def replica_capacity(settings: Settings, open_files: int) -> Capacity:
    by_open_files = max(0, (open_files - FD_RESERVE) // FDS_PER_MAILBOX)
    by_memory = settings.sync_memory_budget_mb * 1024 // settings.sync_mailbox_memory_kib
    mailboxes = min(by_open_files, by_memory, settings.sync_max_mailboxes or by_memory)
    if mailboxes < 1:
        raise CapacityError(
            f"this process may open only {open_files} files, of which {FD_RESERVE} are kept for "
            f"the database, NATS and HTTP: no mailbox could be synced. Raise the hard limit "
            f"(ulimit -Hn, LimitNOFILE=, or the container's nofile ulimit)."
        )
    # at least one slot serves the turns, so that no mailbox starves; at most half, so that most
    # stay live
    rotation = min(settings.sync_rotation_slots, max(1, mailboxes // 2))
    return Capacity(mailboxes, rotation, open_files, by_open_files, by_memory)
