"""Every text pattern that reads other people's mail runs in linear time on crafted input (R27).

Anyone can send mail "From: MAILER-DAEMON" with any body, so each module-level pattern of
:mod:`leadline_mail.mime` and :mod:`leadline_mail.bounces` is run, on its own, over long strings made of
the pieces it looks for (its own words, the characters around its anchors) repeated thousands of times.
A pattern that backtracks quadratically or worse takes seconds here; a linear one takes milliseconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from leadline_mail import bounces, mime

LENGTH = 10_000
PIECES = ("a", "a@", "a.", "@a.", "5.", "5.5.", "550 ", "5.1.1 ", "<a", "a>", " ", "\t", "\n", "\n ", "\r\n", ">", ":")


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
    source = pattern.pattern if isinstance(pattern.pattern, str) else pattern.pattern.decode("latin-1")
    words = sorted(set(re.findall(r"[A-Za-z][A-Za-z-]{1,30}", source)), key=len, reverse=True)[:10]
    units = [*PIECES, *(p + "\n" for p in PIECES), *(w + ": " for w in words)]
    for unit in units:
        yield unit * (LENGTH // len(unit) + 1)


@pytest.mark.parametrize(("name", "pattern"), list(patterns()), ids=[n for n, _ in patterns()])
def test_pattern_is_linear_on_crafted_input(name: str, pattern: re.Pattern[str] | re.Pattern[bytes]) -> None:
    slowest = 0.0
    for text in crafted(pattern):
        subject: str | bytes = text if isinstance(pattern.pattern, str) else text.encode("latin-1")
        started = time.perf_counter()
        for _ in pattern.finditer(subject):  # type: ignore[arg-type]  # str with str, bytes with bytes
            pass
        slowest = max(slowest, time.perf_counter() - started)
    # linear: ~1 ms for 20,000 characters; quadratic: seconds; the bound leaves room for a loaded machine
    assert slowest < 0.5, f"{name} took {slowest:.2f} s on {LENGTH} crafted characters"


def test_every_pattern_is_checked() -> None:
    names = [n for n, _ in patterns()]
    assert len(names) >= 25
    assert any(n.startswith("bounces._REASONS") for n in names) and any("_DIAGNOSTIC_RES" in n for n in names)
