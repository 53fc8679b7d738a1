"""Every text pattern that reads other people's mail runs in linear time on crafted input (R27).

Anyone can send mail "From: MAILER-DAEMON" with any body, so each module-level pattern of
:mod:`leadline_mail.mime` and :mod:`leadline_mail.bounces` is run, on its own, over long strings made of
the pieces it looks for (its own words, the characters around its anchors) repeated thousands of times,
and must run at least four times faster than a known quadratic pattern (``\\s*x`` over spaces) on the same
length, timed on the same machine: linear ones run 30-100 times faster, whatever the machine's load.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from leadline_mail import bounces, mime

LENGTH = 5_000
_QUADRATIC = re.compile(r"\s*x")
PIECES = (
    "a",
    "a@",
    "a.",
    "@a.",
    "5.",
    "5.5.",
    "550 ",
    "5.1.1 ",
    "<a",
    "a>",
    " ",
    "\t",
    "\n",
    "\n ",
    "\r\n",
    ">",
    ":",
)


def patterns() -> Iterator[tuple[str, re.Pattern[str] | re.Pattern[bytes]]]:
    seen: set[int] = set()
    for module in (mime, bounces):
        for name, value in vars(module).items():
            found = value if isinstance(value, tuple | list) else (value,)
            for n, item in enumerate(found):
                pattern = item[1] if isinstance(item, tuple) and len(item) == 2 else item
                if isinstance(pattern, re.Pattern) and id(pattern) not in seen:
                    seen.add(id(pattern))
                    yield f"{module.__name__.rsplit('.', 1)[-1]}.{name}[{n}]", pattern


def crafted(pattern: re.Pattern[str] | re.Pattern[bytes]) -> Iterator[str]:
    source = (
        pattern.pattern if isinstance(pattern.pattern, str) else pattern.pattern.decode("latin-1")
    )
    words = sorted(set(re.findall(r"[A-Za-z][A-Za-z-]{1,30}", source)), key=len, reverse=True)[:10]
    units = [*PIECES, *(p + "\n" for p in PIECES), *(w + ": " for w in words)]
    for unit in units:
        yield unit * (LENGTH // len(unit) + 1)


def seconds(pattern: re.Pattern[str] | re.Pattern[bytes], subject: str | bytes) -> float:
    started = time.perf_counter()
    for _ in pattern.finditer(subject):  # type: ignore[arg-type]  # str with str, bytes with bytes
        pass
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def quadratic() -> float:
    """How long a quadratic pattern takes on LENGTH characters here and now."""
    return min(seconds(_QUADRATIC, " " * LENGTH) for _ in range(3))


@pytest.mark.parametrize(("name", "pattern"), list(patterns()), ids=[n for n, _ in patterns()])
def test_pattern_is_linear_on_crafted_input(
    name: str, pattern: re.Pattern[str] | re.Pattern[bytes], quadratic: float
) -> None:
    bound = quadratic / 4
    for text in crafted(pattern):
        subject: str | bytes = text if isinstance(pattern.pattern, str) else text.encode("latin-1")
        elapsed = seconds(pattern, subject)
        for _ in range(2):  # a busy machine may pause one search; a slow pattern stays slow
            if elapsed < bound:
                break
            elapsed = min(elapsed, seconds(pattern, subject))
        assert elapsed < bound, (
            f"{name} took {elapsed:.3f} s on {subject[:40]!r}..., a quadratic one {quadratic:.3f} s"
        )


def test_every_pattern_is_checked() -> None:
    names = [n for n, _ in patterns()]
    assert len(names) >= 25
    assert any(n.startswith("bounces._REASONS") for n in names) and any(
        "_DIAGNOSTIC_RES" in n for n in names
    )
