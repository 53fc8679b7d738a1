"""Lead recipients: the service's own copy of lead addresses, and the lead service when the copy is
behind.

The copy (``lead_address``) is kept from ``lead.created|updated|deleted`` and read on a plain
connection of its own (one statement, outside the caller's unit of work: the copy is only read).  A
lead created a moment ago may not be in it yet: its event is on the way.  So a
lead the copy does not hold is asked of the lead service (NATS request/reply,
``RPC_LEAD_ADDRESSES``), and the answer is kept for ``KEPT_SECONDS`` in this
process, until the event has surely arrived; a lead the lead service does not
know either is unknown (422).  No answer is :class:`LeadsUnavailable` (503),
never a guess.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from nats.aio.client import Client
from prometheus_client import Counter

from leadline_kit import rpc
from leadline_kit.db import Database
from leadline_mail.addresses import normalize_addresses
from leadline_proto.requests import LeadAddressesReply, LeadAddressesRequest
from leadline_proto.subjects import RPC_LEAD_ADDRESSES
from leadline_send.messages import repository

# An answer of the lead service stands in for the copy this long: its lead.created is applied within
# a fraction of a second unless the consumer is behind.
KEPT_SECONDS = 5.0
MAX_KEPT = 10_000

LEAD_ASKS = Counter(
    "leadline_send_lead_asks_total",
    "Leads asked of the lead service because the copy did not hold them yet",
    ["answer"],
)

LeadRecipient = tuple[str, str]  # the lead's first address and its name, as the copy holds them


class LeadsUnavailable(Exception):
    """The lead service did not answer for leads the copy does not hold."""


def lead_copy(addresses: Iterable[str], name: str) -> tuple[list[str], str]:
    """What the copy keeps of a lead: its valid addresses normalised (first first, no duplicates)
    and its name on one line without NUL."""
    return normalize_addresses(addresses), name.replace("\r", " ").replace("\n", " ").replace(
        "\x00", ""
    )


class LeadDirectory:
    def __init__(self, db: Database, nc: Client, timeout: float) -> None:
        self.db = db
        self.nc = nc
        self.timeout = timeout
        self._kept: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, LeadRecipient]] = {}

    async def recipients(
        self, company_id: uuid.UUID, lead_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, LeadRecipient]:
        """Each known lead's first address and name; a lead missing from the answer is unknown."""
        async with self.db.plain() as conn:
            found = await repository.lead_recipients(conn, company_id, lead_ids)
        missing = [i for i in dict.fromkeys(lead_ids) if i not in found]
        now = time.monotonic()
        for lead_id in list(missing):
            kept = self._kept.get((company_id, lead_id))
            if kept is not None and kept[0] > now:
                found[lead_id] = kept[1]
                missing.remove(lead_id)
        if missing:
            found.update(await self._ask(company_id, missing))
        return found

    async def _ask(
        self, company_id: uuid.UUID, lead_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, LeadRecipient]:
        request = LeadAddressesRequest(company_id=company_id, lead_ids=lead_ids)
        try:
            reply = await rpc.ask(
                self.nc, RPC_LEAD_ADDRESSES, request, LeadAddressesReply, self.timeout
            )
        except rpc.Unanswered as exc:
            LEAD_ASKS.labels("unavailable").inc(len(lead_ids))
            raise LeadsUnavailable(
                f"the lead service did not answer for leads this service has not heard of yet "
                f"({exc.reason})"
            ) from exc
        if reply.detail:
            LEAD_ASKS.labels("unavailable").inc(len(lead_ids))
            raise LeadsUnavailable(f"the lead service refused the request: {reply.detail}")
        found: dict[uuid.UUID, LeadRecipient] = {}
        for lead in reply.leads:
            addresses, name = lead_copy(lead.addresses, lead.name)
            if addresses:  # a lead without an address has nothing to send to, as in the copy
                found[lead.lead_id] = (addresses[0], name)
        LEAD_ASKS.labels("found").inc(len(found))
        LEAD_ASKS.labels("unknown").inc(len(lead_ids) - len(found))
        now = time.monotonic()
        if len(self._kept) > MAX_KEPT:
            self._kept = {k: v for k, v in self._kept.items() if v[0] > now}
        for lead_id, recipient in found.items():
            self._kept[(company_id, lead_id)] = (now + KEPT_SECONDS, recipient)
        return found
