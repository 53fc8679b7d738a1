"""Email addresses as Leadline compares them: validated, lower-cased, domain in ASCII (R23).

Matching mail to leads must not rest on a lenient parse (CVE-2023-27043 makes
``email.utils`` on Python 3.11.7 read ``alice@example.org@evil.example`` style
input wrongly), so every address goes through ``email-validator``.  The whole
address is lower-cased: providers treat local parts case-insensitively in
practice, and a lead typed as ``Jane@Example.org`` must match mail from
``jane@example.org``.  Internationalised domains are stored as IDNA ASCII
(punycode) so that both spellings of a domain compare equal.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from email_validator import EmailNotValidError, validate_email

_MAX_ADDRESS_LENGTH = 320


def normalize_address(value: str) -> str | None:
    """The canonical form of one bare address (``local@domain``), or None if it is not a valid
    address."""
    if not value or len(value) > _MAX_ADDRESS_LENGTH:
        return None
    return _normalize(value)


def normalize_addresses(values: Iterable[str]) -> list[str]:
    """The valid addresses of ``values`` in their canonical form, first first, each once."""
    return [a for a in dict.fromkeys(normalize_address(value) for value in values) if a]


# A mailbox repeats the same few addresses (the owner's in nearly every message) and validation is
# the largest cost of a header scan, so results are cached; the function is pure and its input is
# bounded.
@functools.lru_cache(maxsize=65536)
def _normalize(value: str) -> str | None:
    candidate = value.strip()
    if candidate.startswith("<") and candidate.endswith(">"):
        candidate = candidate[1:-1].strip()
    try:
        result = validate_email(
            candidate,
            check_deliverability=False,
            allow_display_name=False,
            allow_quoted_local=False,
        )
    except (EmailNotValidError, UnicodeError, ValueError):
        return None
    domain = result.ascii_domain
    local = result.local_part
    return f"{local}@{domain}".lower()


def address_domain(address: str) -> str:
    """The domain part (after the last ``@``), lower-cased; ``""`` when there is none."""
    _, at, domain = address.rpartition("@")
    return domain.lower() if at else ""
