"""Pacing the IMAP logins of one replica.

Bringing thousands of mailboxes online, or back after their server
restarted, must flood neither the server nor this replica's event loop
(a TLS handshake and a login cost both sides CPU).  Every login of a sync
worker passes the replica's :class:`LoginGate`:

- at most ``sync_max_logins`` logins are in flight at once; the others
  queue in arrival order (the scheduler claims mailboxes in batches, and
  dropped sessions reconnect after a jittered pause);
- a host that refused a login for too many connections (Dovecot's
  ``NO [LIMIT] Maximum number of connections``, Gmail's ``[ALERT] Too many
  simultaneous connections``) is backed off: no login goes to it until its
  pause (exponential in its refusals in a row, with jitter) has passed, and
  the refused mailbox waits its own growing pause too.  The mailbox is not
  marked ``error``: nothing is wrong with its settings.  The first good login
  to the host ends the host's pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from leadline_kit.backoff import Backoff

LOGINS_WAITING = Gauge(
    "leadline_sync_logins_waiting", "Mailbox logins queued at the replica's login gate"
)
HOST_REFUSALS = Counter(
    "leadline_sync_login_refusals_total",
    "Logins a mail server refused for too many connections (the host backs off)",
)


@dataclass
class _HostPause:
    refusals: int = 0
    until: float = 0.0


class LoginGate:
    def __init__(
        self,
        in_flight: int,
        base_seconds: float,
        max_seconds: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(in_flight)
        self._backoff = Backoff(base_seconds, max_seconds)
        self._clock = clock or time.monotonic
        self._hosts: dict[str, _HostPause] = {}

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        """Hold one of the replica's login slots, once ``host`` is not paused."""
        LOGINS_WAITING.inc()
        try:
            pause = self._hosts.get(host)
            if pause is not None and pause.until > self._clock():
                await asyncio.sleep(pause.until - self._clock())
            await self._slots.acquire()
        finally:
            LOGINS_WAITING.dec()
        try:
            yield
        finally:
            self._slots.release()

    def succeeded(self, host: str) -> None:
        self._hosts.pop(host, None)

    def refused(self, host: str, refusals_in_a_row: int) -> float:
        """A login to ``host`` was refused for too many connections: pause the host; seconds the
        refused mailbox waits (``refusals_in_a_row``: its own count) before it tries again."""
        HOST_REFUSALS.inc()
        pause = self._hosts.setdefault(host, _HostPause())
        pause.refusals += 1
        jitter = self._backoff.draw()
        pause.until = max(
            pause.until, self._clock() + self._backoff.seconds(pause.refusals - 1, jitter)
        )
        return self._backoff.seconds(refusals_in_a_row - 1, jitter)
