"""A parser process of :mod:`leadline_sync.sync.parsing`: ``python -m
leadline_sync.sync.parse_worker PARENT``.

It imports what parsing needs and nothing else (no event loop, no pydantic: 18 MiB), reads
length-prefixed pickled batches of raw messages on stdin and answers each with the pickled list of
``ParsedMessage``.  It leaves with its parent: end-of-file on stdin, or SIGKILL from the kernel when
the parent dies (``PR_SET_PDEATHSIG``, Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import struct
import sys
from collections.abc import Sequence
from dataclasses import replace

from leadline_mail.mime import ParsedMessage, parse_message

LENGTH = struct.Struct("!Q")  # the length of each pickle that follows, both ways
_PR_SET_PDEATHSIG = 1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, kept


def map_large_allocations() -> None:
    """Blocks of 128 KB and more (raw bodies, attachments, the pickles of a batch) get pages of
    their own, given back when freed.  glibc otherwise raises that threshold to the largest block
    freed so far (up to 32 MiB), after which batches are carved from the heap and the heap stays as
    large as the largest batches left it: a 3,000-message history left the service 20 MiB larger and
    the parser process 7 MiB, and peaked 21 MiB higher (process tree)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


# What of a body leaves the service: the timeline keeps a 300-character preview of a message and
# nothing else of its body (lead-service timeline/snippets.py), so an event carries the start of the
# text, enough for that preview, and the HTML (the start the preview reads) only when there is no
# text; the body stays in the mailbox. A whole body crossed the outbox, JetStream and the lead
# service's decoding for nothing. Cut where a message is parsed, so that no more than this crosses a
# parser process's pipe either.
PREVIEW_TEXT_CHARS = 4_000
PREVIEW_HTML_CHARS = 64 * 1024


def parse_all(raws: Sequence[bytes]) -> list[ParsedMessage]:
    """Each message parsed, and of its body only what an event carries (its preview's text or
    HTML)."""
    return [_preview(parse_message(raw)) for raw in raws]


def _preview(parsed: ParsedMessage) -> ParsedMessage:
    text = parsed.text[:PREVIEW_TEXT_CHARS]
    html = parsed.html[:PREVIEW_HTML_CHARS] if parsed.html and not text.strip() else None
    return replace(parsed, text=text, html=html)


def _leave_with(parent: int) -> None:
    """Die with the parent: SIGKILL from the kernel when it exits (Linux), and at once if it already
    has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit(0)


def _serve(parent: int) -> None:
    _leave_with(parent)
    map_large_allocations()
    # a Ctrl-C of the service is the service's to handle
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = requests.read(LENGTH.size)
        if len(head) < LENGTH.size:
            return  # the parent closed the pipe or died
        (length,) = LENGTH.unpack(head)
        raws = pickle.loads(requests.read(length))  # noqa: S301 - our parent's request
        answer = pickle.dumps(parse_all(raws), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            answers.write(LENGTH.pack(len(answer)) + answer)
            answers.flush()
        except BrokenPipeError:
            return


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
