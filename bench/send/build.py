"""Building one Smart Mail (MIME, serialised, read back and checked): the largest part of the API's
work.

The same 10 KB personal message as ``bench/send/run.py``, to a different lead each time, built with
``build_message`` and, for reference, the bare standard library (an ``EmailMessage`` with the same
headers and body, ``as_bytes``), in the same process.

    uv run python bench/send/build.py [--messages 3000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage

from leadline_send.messages.composition import Draft, Recipient, Sender, build_message

BODY = ("Hello, this is a ten kilobyte Smart Mail used to measure sending throughput.\n" * 134)[
    :10_000
]
SENDER = Sender("cs@company.example.com", "Customer Service")


def ours(n: int, now: datetime) -> bytes:
    draft = Draft(
        category="personal",
        to=(Recipient(f"lead{n}@example.org", ""),),
        subject=f"Smart Mail {n}",
        text=BODY,
    )
    return build_message(
        draft, SENDER, message_id=f"<{n}@bench.example>", date=now, unsubscribe_link=None
    ).raw


def stdlib(n: int, now: datetime) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Customer Service <cs@company.example.com>"
    msg["To"] = f"lead{n}@example.org"
    msg["Subject"] = f"Smart Mail {n}"
    msg["Date"] = now
    msg["Message-ID"] = f"<{n}@bench.example>"
    msg.set_content(BODY)
    return msg.as_bytes(policy=policy.SMTP)


def per_message_ms(build: Callable[[int, datetime], bytes], messages: int) -> float:
    now = datetime.now(UTC)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for n in range(messages):
            build(n, now)
        best = min(best, (time.perf_counter() - started) * 1000 / messages)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    built, bare = per_message_ms(ours, args.messages), per_message_ms(stdlib, args.messages)
    print(
        f"build_message (built, read back, checked): {built:.3f} ms per message; "
        f"bare EmailMessage + as_bytes: {bare:.3f} ms; ratio {built / bare:.2f}"
    )


if __name__ == "__main__":
    main()
