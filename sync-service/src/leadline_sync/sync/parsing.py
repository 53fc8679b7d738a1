"""Parsing whole messages off the event loop.

``parse_message`` is the most expensive step of a sync (about a millisecond a
message, up to its two-second cap on hostile input) and pure CPU: inline it
would hold up the IDLE sessions and lease renewals of every other mailbox of
the replica.  With ``sync_parse_processes`` > 0 a batch of at least
:data:`INLINE_BELOW` messages is parsed in up to that many worker processes
(a second core parses while the event loop fetches and stores); fewer, like
the one message an IDLE push brings, are parsed inline, where a round trip
would cost more than the parse.

The workers are plain child processes (``python -m
leadline_sync.sync.parse_worker``) that read length-prefixed pickled batches on
stdin and answer on stdout; nothing else (no forkserver, no resource
tracker).  They start when the first large batch comes (that batch is parsed
inline meanwhile) and stop after :data:`IDLE_SECONDS` without one, so a
replica holding only live mailboxes, or a history of little lead mail, keeps
no parser memory.  A worker leaves with its parent: it reads end-of-file on
stdin when the parent dies, however it died (SIGKILL included), and on Linux
the kernel also sends it SIGKILL then (``PR_SET_PDEATHSIG``).  A worker that
dies or answers garbage takes only its part of the batch back to inline
parsing; the next large batch starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import sys
from collections.abc import Sequence

from leadline_mail.mime import ParsedMessage
from leadline_sync.sync import parse_worker
from leadline_sync.sync.parse_worker import LENGTH, parse_all

log = logging.getLogger("leadline.sync.parsing")

INLINE_BELOW = 32  # a batch of fewer messages is parsed inline (some 30 ms at most here)
IDLE_SECONDS = 30.0  # the workers stop after this long without a batch
# raw message bytes a worker is sent at once (a larger message goes alone)
REQUEST_BYTES = 512 * 1024


def byte_runs(raws: Sequence[bytes], limit: int) -> list[Sequence[bytes]]:
    """Consecutive runs of ``raws`` of at most ``limit`` bytes each (a larger message: a run of its
    own)."""
    runs: list[Sequence[bytes]] = []
    start = size = 0
    for at, raw in enumerate(raws):
        if size and size + len(raw) > limit:
            runs.append(raws[start:at])
            start, size = at, 0
        size += len(raw)
    if start < len(raws):
        runs.append(raws[start:])
    return runs


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def parse(self, raws: Sequence[bytes]) -> list[ParsedMessage]:
        """``raws`` in requests of about :data:`REQUEST_BYTES` each, one at a time: the bytes in
        flight to a worker (its request, and the copies of it in both processes) stay that small
        however large the batch."""
        parsed: list[ParsedMessage] = []
        for part in byte_runs(raws, REQUEST_BYTES):
            parsed += await self._parse(part)
        return parsed

    async def _parse(self, raws: Sequence[bytes]) -> list[ParsedMessage]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        request = pickle.dumps(list(raws), protocol=pickle.HIGHEST_PROTOCOL)
        stdin.write(LENGTH.pack(len(request)))
        stdin.write(request)
        del request
        await stdin.drain()
        (length,) = LENGTH.unpack(await stdout.readexactly(LENGTH.size))
        parsed = pickle.loads(await stdout.readexactly(length))  # noqa: S301 - our own child's answer
        if not isinstance(parsed, list) or len(parsed) != len(raws):
            raise ValueError("a parser process answered for another batch")
        return parsed

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class MessageParser:
    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._idle: list[_Worker] = []
        self._busy = 0
        self._starting: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._returned = asyncio.Event()  # a worker became idle

    def expect(self, count: int) -> None:
        """A batch of ``count`` messages is coming (its bodies are being read): if it is one for the
        workers and none runs, start them now, so that they start while the bodies arrive and the
        batch is not parsed inline on the event loop."""
        if self.processes <= 0 or count < INLINE_BELOW or self._idle or self._busy:
            return
        self._keep_alive()
        if self._starting is None:
            self._starting = asyncio.create_task(self._start())

    async def parse(self, raws: Sequence[bytes]) -> list[ParsedMessage]:
        if not raws:
            return []
        if self.processes <= 0 or len(raws) < INLINE_BELOW:
            return parse_all(raws)
        self._keep_alive()
        while not self._idle and self._busy:  # another mailbox's batch has them: wait for one
            self._returned.clear()
            await self._returned.wait()
        if not self._idle and self._starting is not None:
            # started by expect(): a fork and exec, not their imports
            await asyncio.shield(self._starting)
        if not self._idle:
            if self._starting is None:
                self._starting = asyncio.create_task(self._start())
            return parse_all(raws)  # while the workers start
        count = min(len(self._idle), self.processes, len(raws))
        chunk = -(-len(raws) // count)  # one part per worker: few round trips
        parts = [raws[i : i + chunk] for i in range(0, len(raws), chunk)]
        workers = self._idle[: len(parts)]
        del self._idle[: len(parts)]
        self._busy += len(workers)
        try:
            done = await asyncio.gather(
                *(self._parse_in(w, part) for w, part in zip(workers, parts, strict=True))
            )
        finally:
            self._busy -= len(workers)
            self._returned.set()
            self._keep_alive()
        return [parsed for part in done for parsed in part]

    async def _parse_in(self, worker: _Worker, raws: Sequence[bytes]) -> list[ParsedMessage]:
        try:
            parsed = await worker.parse(raws)
        except (
            OSError,
            EOFError,
            ValueError,
            pickle.UnpicklingError,
            asyncio.IncompleteReadError,
        ) as exc:
            log.error(
                "a parser process failed (%s); parsing its part inline", exc.__class__.__name__
            )
            worker.stop()
            return parse_all(raws)
        except BaseException:
            worker.stop()  # cancelled half-way: its answer would be read by the next batch
            raise
        self._idle.append(worker)
        return parsed

    async def _start(self) -> None:
        try:
            for _ in range(self.processes - len(self._idle) - self._busy):
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    parse_worker.__name__,
                    str(os.getpid()),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
                self._idle.append(_Worker(process))
        except OSError as exc:
            log.error("could not start a parser process (%s); parsing inline", exc)
        finally:
            self._starting = None

    def _keep_alive(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._stop_idle)

    def _stop_idle(self) -> None:
        self._idle_timer = None
        for worker in self._idle:
            worker.stop()
        self._idle.clear()

    @property
    def running(self) -> int:
        """Worker processes alive now (idle or parsing)."""
        return len(self._idle) + self._busy

    def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._starting is not None:
            self._starting.cancel()
            self._starting = None
        self._stop_idle()
