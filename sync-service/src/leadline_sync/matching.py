"""Which mail may leave the service: the matching rules R5 and R6.

A message is published only when one of its counterparts (every address in
From, To, Cc and — in Sent — Bcc, except the mailbox's own address) is the
address of a lead of the company and is not blocklisted.  Blocklisted
addresses and domains (a domain blocks its subdomains too) and, unless the
company turned it off, the company's own domains never match, and they are
left out of the published recipient lists.  A lead that existed when the
mailbox was connected gets its whole history; a lead created later only mail
dated from its creation on.

Matching reads the service's own copy of leads, blocklist and company
settings, kept from events, one query per header batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from leadline_mail.addresses import address_domain, normalize_address
from leadline_sync.directory import repository


def normalize_domain(value: str) -> str | None:
    domain = value.strip().lstrip("@").rstrip(".").lower()
    if not domain or "@" in domain:
        return None
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def normalize_blocklist_value(kind: str, value: str) -> str | None:
    return normalize_address(value) if kind == "address" else normalize_domain(value)


@dataclass
class CompanyDirectory:
    """What matching needs to know about one company, for the addresses of one batch."""

    # address → earliest lead creation
    lead_since: dict[str, datetime] = field(default_factory=dict)
    blocked_addresses: set[str] = field(default_factory=set)
    # the blocklist's and, when blocked, own domains
    blocked_domains: set[str] = field(default_factory=set)
    own_domains: set[str] = field(default_factory=set)  # of those, the company's own

    def is_blocked(self, address: str) -> bool:
        if address in self.blocked_addresses:
            return True
        return any(domain in self.blocked_domains for domain in _domain_and_parents(address))

    def is_own(self, address: str) -> bool:
        return any(domain in self.own_domains for domain in _domain_and_parents(address))

    def is_lead(self, address: str) -> bool:
        return address in self.lead_since and not self.is_blocked(address)

    def lead_matches(self, address: str, sent_at: datetime, connected_at: datetime) -> bool:
        created = self.lead_since.get(address)
        if created is None or self.is_blocked(address):
            return False
        # Date headers carry whole seconds: mail from the second the lead was created counts
        return created <= connected_at or sent_at >= created.replace(microsecond=0)


async def load_directory(
    session: AsyncSession, company_id: uuid.UUID, addresses: Collection[str]
) -> CompanyDirectory:
    directory = CompanyDirectory()
    if addresses:
        directory.lead_since = await repository.lead_since(session, company_id, addresses)
    for kind, value in await repository.blocklist(session, company_id):
        (directory.blocked_addresses if kind == "address" else directory.blocked_domains).add(value)
    settings = await repository.company_settings(session, company_id)
    if settings is not None and settings.block_own_domains:
        directory.blocked_domains.update(settings.domains)
        directory.own_domains.update(settings.domains)
    return directory


def _domain_and_parents(address: str) -> list[str]:
    labels = address_domain(address).split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


@dataclass(frozen=True)
class Parties:
    from_address: str | None
    to: list[str]
    cc: list[str]
    bcc: list[str]

    def counterparts(self, own_address: str) -> list[str]:
        everyone = ([self.from_address] if self.from_address else []) + self.to + self.cc + self.bcc
        seen: dict[str, None] = {}
        for address in everyone:
            if address != own_address:
                seen.setdefault(address)
        return list(seen)


Direction = Literal["inbound", "outbound"]
FolderRole = Literal["inbox", "sent"]


@dataclass(frozen=True)
class Match:
    direction: Direction
    to: list[str]
    cc: list[str]
    leads: list[str]


def match_message(
    parties: Parties,
    *,
    folder: FolderRole,
    own_address: str,
    sent_at: datetime,
    connected_at: datetime,
    directory: CompanyDirectory,
) -> Match | None:
    """The published view of a message, or None when it must not leave the service."""
    leads = [
        a
        for a in parties.counterparts(own_address)
        if directory.lead_matches(a, sent_at, connected_at)
    ]
    if not leads:
        return None
    outbound = folder == "sent" or parties.from_address == own_address
    return Match(
        direction="outbound" if outbound else "inbound",
        to=[a for a in parties.to if a == own_address or not directory.is_blocked(a)],
        cc=[a for a in parties.cc if a == own_address or not directory.is_blocked(a)],
        leads=leads,
    )


def unmatched_reason(parties: Parties, *, own_address: str, directory: CompanyDirectory) -> str:
    """Why a message that :func:`match_message` refused stays in the mailbox (a key of the audit's
    REASONS)."""
    leads = [a for a in parties.counterparts(own_address) if a in directory.lead_since]
    if not leads:
        return "no_lead"
    unblocked = [a for a in leads if not directory.is_blocked(a)]
    if unblocked:
        return "before_lead"  # lead_matches refused only by the creation date (R5)
    if all(directory.is_own(a) and a not in directory.blocked_addresses for a in leads):
        return "own_domain"
    return "blocklisted"
