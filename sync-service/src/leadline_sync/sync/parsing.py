"""Parsing whole messages off the event loop.

``parse_message`` is the most expensive step of a sync (about a millisecond a
message, up to its two-second cap on hostile input) and pure CPU: inline it
would hold up the IDLE sessions and lease renewals of every other mailbox of
the replica.  With ``sync_parse_processes`` > 0 it runs in that many worker
processes (a second core does the parsing while the event loop fetches and
stores); a worker that dies takes only its batch back to inline parsing, and
the pool is rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from leadline_mail.mime import ParsedMessage, parse_message

log = logging.getLogger("leadline.sync.parsing")


def _parse_all(raws: Sequence[bytes]) -> list[ParsedMessage]:
    return [parse_message(raw) for raw in raws]


class MessageParser:
    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: a fork of this process would copy its event loop, sockets and threads
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("forkserver"))
        return self._pool

    async def start(self) -> None:
        """Start the worker processes now, so that the first mail of a session (an IDLE push, the newest
        mail of a history) does not wait for a forkserver and its workers to import."""
        if self.processes <= 0:
            return
        loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(
                *(loop.run_in_executor(self._executor(), _parse_all, ()) for _ in range(self.processes))
            )
        except BrokenProcessPool:
            log.error("a parser process died while starting; the first batch starts new ones")
            self.close()

    async def parse(self, raws: Sequence[bytes]) -> list[ParsedMessage]:
        if not raws:
            return []
        if self.processes <= 0:
            return _parse_all(raws)
        loop = asyncio.get_running_loop()
        chunk = max(1, -(-len(raws) // self.processes))  # one chunk per worker: few round trips
        try:
            parts = await asyncio.gather(
                *(
                    loop.run_in_executor(self._executor(), _parse_all, raws[i : i + chunk])
                    for i in range(0, len(raws), chunk)
                )
            )
        except BrokenProcessPool:
            log.error("a parser process died; parsing this batch inline and starting new processes")
            self.close()
            return _parse_all(raws)
        return [parsed for part in parts for parsed in part]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
