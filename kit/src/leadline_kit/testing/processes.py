"""A child Python process for the tests that kill one (:class:`leadline_kit.infra.AppProcess` is the
uvicorn service of a port; this is any script or module).

Started with its environment over the test's; held until :meth:`ChildProcess.release` (a start of
Python and its imports takes seconds, 20 s and more on a loaded machine, so a test that times a kill
starts its children first and lets them go when it says so); waited for on a line it prints (its
stdout is read by a thread, so a child never blocks on a full pipe); SIGKILLed and reaped.  Its
stderr is the test's (pytest shows it with a failure).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class ChildProcess:
    """``python <args>``: ``["-c", code, ...]`` or ``["-m", module, ...]``."""

    args: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)  # over os.environ
    held: bool = False  # its stdin is a pipe: the child waits on it for release()
    output: bool = False  # its stdout is read: line()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _unread: queue.Queue[str | None] = field(default_factory=queue.Queue, init=False, repr=False)
    _ended: bool = field(default=False, init=False, repr=False)  # its stdout was read to the end

    def start(self) -> ChildProcess:
        self.process = subprocess.Popen(
            [sys.executable, *self.args],
            env={**os.environ, **self.env},
            stdin=subprocess.PIPE if self.held else None,
            stdout=subprocess.PIPE if self.output else None,
        )
        if self.output:
            threading.Thread(
                target=self._read, name=f"child-{self.process.pid}-stdout", daemon=True
            ).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self.process.stdout as stdout:
            for raw in stdout:
                self._unread.put(raw.decode(errors="replace").rstrip("\r\n"))
        self._unread.put(None)

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def release(self) -> None:
        """The word a held child waits for on its stdin."""
        assert self.process is not None and self.process.stdin is not None, "not started held"
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def line(self, timeout: float = 60.0) -> str:
        """The next line it prints (``print(..., flush=True)``): its "ready", or what it has to
        tell."""
        assert self.output, "its stdout is not read"
        deadline = time.monotonic() + timeout
        while not self._ended:
            try:
                line = self._unread.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise TimeoutError(f"pid {self.pid} printed no line within {timeout}s") from None
            if line is not None:
                return line
            self._ended = True
        assert self.process is not None
        raise RuntimeError(
            f"pid {self.pid} closed its stdout (exit code {self.process.poll()}) before a line"
        )

    def wait(self, timeout: float | None = None) -> int:
        """Its exit code, once it exits by itself (``-9``: SIGKILLed); TimeoutExpired after
        ``timeout``."""
        assert self.process is not None, "not started"
        return self.process.wait(timeout)

    def kill(self) -> int:
        """SIGKILL to this process alone (not its children: the tests check that they die with it),
        reaped."""
        assert self.process is not None, "not started"
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        return self._reaped()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (a chance to shut down), SIGKILL after ``timeout``."""
        assert self.process is not None, "not started"
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        return self.kill()

    def _reaped(self) -> int:
        assert self.process is not None
        code = self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        return code

    def __enter__(self) -> ChildProcess:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
