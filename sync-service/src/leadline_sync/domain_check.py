"""Domain check (R18): are DMARC and DKIM published for the synced address's domain?

Gmail and Yahoo reject unauthenticated bulk mail since February 2024 (seed
000).  DMARC lives at one name (``_dmarc.<domain>``).  DKIM keys live under
selectors that cannot be listed, so the check looks up the selectors the
common providers use and reports which ones publish a key; finding none is
"not found", not proof of absence.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

import dns.exception

if TYPE_CHECKING:
    import dns.asyncresolver

from leadline_sync.mailbox.schemas import DnsRecordCheck, DomainCheck

COMMON_DKIM_SELECTORS = (
    "google",
    "selector1",
    "selector2",
    "default",
    "dkim",
    "mail",
    "k1",
    "k2",
    "k3",
    "s1",
    "s2",
    "smtp",
    "mx",
    "zoho",
    "protonmail",
    "fm1",
    "fm2",
    "sig1",
    "everlytickey1",
    "mandrill",
    "pm",
    "sendgrid",
)


class TxtResolver(Protocol):
    async def txt(self, name: str) -> list[str]:
        """The TXT strings published at ``name`` (empty when there are none or the name does not
        exist)."""
        ...


class DnsTxtResolver:
    """dnspython's asynchronous resolver (system configuration unless one is passed), made at the
    first check: the resolver's modules are 3 MiB of every sync process, and most never check a
    domain."""

    def __init__(
        self, resolver: dns.asyncresolver.Resolver | None = None, timeout: float = 5.0
    ) -> None:
        self._resolver = resolver
        self.timeout = timeout

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            import dns.asyncresolver

            self._resolver = dns.asyncresolver.Resolver()
        self._resolver.lifetime = self.timeout
        return self._resolver

    async def txt(self, name: str) -> list[str]:
        import dns.resolver

        try:
            answer = await self.resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


async def check_domain(domain: str, resolver: TxtResolver) -> DomainCheck:
    try:
        dmarc_answer, *dkim_answers = await asyncio.gather(
            resolver.txt(f"_dmarc.{domain}"),
            *(
                resolver.txt(f"{selector}._domainkey.{domain}")
                for selector in COMMON_DKIM_SELECTORS
            ),
        )
    except dns.exception.DNSException as exc:
        unknown = DnsRecordCheck(
            published=False, records=[], detail=f"DNS lookup failed: {type(exc).__name__}"
        )
        return DomainCheck(
            domain=domain,
            dmarc=unknown,
            dkim=unknown,
            ready_for_bulk=False,
            advice="The domain's DNS could not be read right now; try again later.",
        )
    dmarc_records = [r for r in dmarc_answer if r.strip().lower().startswith("v=dmarc1")]
    dmarc = DnsRecordCheck(
        published=bool(dmarc_records),
        records=dmarc_records,
        detail=f"_dmarc.{domain}" if dmarc_records else f"no DMARC policy at _dmarc.{domain}",
    )
    selectors = [
        selector
        for selector, records in zip(COMMON_DKIM_SELECTORS, dkim_answers, strict=True)
        if any(_is_dkim_key(r) for r in records)
    ]
    dkim = DnsRecordCheck(
        published=bool(selectors),
        records=[f"{s}._domainkey.{domain}" for s in selectors],
        detail=("DKIM key found for selector " + ", ".join(selectors))
        if selectors
        else "no DKIM key found under the common selectors (your provider may use another one)",
    )
    missing = [name for name, check in (("DMARC", dmarc), ("DKIM", dkim)) if not check.published]
    advice = (
        "DMARC and DKIM are published: Gmail and Yahoo accept authenticated mail from this domain."
        if not missing
        else f"Publish {' and '.join(missing)} for {domain}: since February 2024 Gmail and Yahoo "
        "reject bulk mail from domains without them, and Smart Mail sent from this address may "
        "bounce."
    )
    return DomainCheck(
        domain=domain, dmarc=dmarc, dkim=dkim, ready_for_bulk=not missing, advice=advice
    )


def _is_dkim_key(record: str) -> bool:
    tags = {
        part.split("=", 1)[0].strip().lower(): part.split("=", 1)[1].strip()
        for part in record.split(";")
        if "=" in part
    }
    return bool(tags.get("p")) and tags.get("v", "DKIM1").upper() == "DKIM1"
