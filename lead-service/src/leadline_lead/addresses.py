"""One normal form for email addresses and domains, so a lead's address matches the mail it appears
in.

An address is validated by ``email-validator`` (syntax only, no DNS) and kept
as ``local-part@domain`` with the local part lower-cased (the product treats
addresses case-insensitively) and the domain in its IDNA ASCII form
(punycode), lower-cased: ``José@Bücher.DE`` → ``josé@xn--bcher-kva.de``.  The
sync service publishes mail addresses in the same form; the lead service
normalises them again anyway before matching.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from functools import lru_cache

import idna
from email_validator import EmailNotValidError, validate_email

MAX_ADDRESS_LENGTH = 254
# printable ASCII, no space, quote, backslash, angle bracket, comma or semicolon
_PLAIN = re.compile(r"[!#-'*+\-./0-9=?A-~]+@[A-Za-z0-9.-]+")


class InvalidAddress(ValueError):
    """Not an email address we can store or match."""


@lru_cache(maxsize=65_536)
def normalise_address(raw: str) -> str:
    """The normal form of ``raw``; raises :class:`InvalidAddress`."""
    candidate = raw.strip()
    if not candidate or len(candidate) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress(f"{raw[:80]!r} is not a valid email address")
    try:
        info = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(f"{raw[:80]!r} is not a valid email address: {exc}") from exc
    domain = (info.ascii_domain or info.domain).lower()
    return f"{info.local_part.lower()}@{domain}"


def address_or_none(raw: str) -> str | None:
    """The normal form of an address found in mail, or None when it is not valid (it then matches
    nothing)."""
    try:
        return normalise_address(raw)
    except InvalidAddress:
        return None


def address_for_matching(raw: str) -> str | None:
    """The form in which an address found in mail is looked up among lead addresses.

    A plain ASCII address without quotes or spaces is only lower-cased: for a
    valid address that is exactly its normal form, and an invalid one can never
    equal a lead's address (each was validated by ``email-validator`` when it
    was stored), so it matches nothing, as it should.  Anything else goes
    through the validator.  This keeps the consumer's hot path off the
    validator for the common case.
    """
    candidate = raw.strip()
    if (
        candidate.isascii()
        and 3 <= len(candidate) <= MAX_ADDRESS_LENGTH
        and candidate.count("@") == 1
        and _PLAIN.fullmatch(candidate)
    ):
        return candidate.lower()
    return address_or_none(candidate)


@lru_cache(maxsize=8_192)
def normalise_domain(raw: str) -> str:
    """The IDNA ASCII, lower-case form of a domain (a leading ``@`` is allowed); raises
    :class:`InvalidAddress`."""
    candidate = raw.strip().removeprefix("@").rstrip(".").lower()
    if not candidate or len(candidate) > 253 or "." not in candidate:
        raise InvalidAddress(f"{raw[:80]!r} is not a valid domain")
    try:
        ascii_domain = idna.encode(candidate, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidAddress(f"{raw[:80]!r} is not a valid domain: {exc}") from exc
    # reuse the address validator for what idna does not check (label characters, numeric TLDs)
    try:
        validate_email(f"postmaster@{ascii_domain}", check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(f"{raw[:80]!r} is not a valid domain: {exc}") from exc
    return ascii_domain


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def domain_and_parents(domain: str) -> list[str]:
    """``a.b.example.com`` → itself, ``b.example.com``, ``example.com``: the blocklist entries that
    block it (a domain entry blocks its subdomains too; a bare top-level domain is never an
    entry)."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


def is_blocked(address: str, blocked: Collection[str]) -> bool:
    """Whether ``blocked`` (addresses and domains) holds the address or one of its domains."""
    return address in blocked or any(d in blocked for d in domain_and_parents(domain_of(address)))
