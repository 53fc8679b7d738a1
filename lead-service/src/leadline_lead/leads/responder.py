"""``RPC_LEAD_ADDRESSES``: the send service asks for leads whose ``lead.created`` it has not applied
yet.

Leads are announced by events, and a service that learns them from its
stream may be a moment behind the API: a CRM that creates a lead and mails
it in the next request would otherwise be refused.  Answered over NATS core
request/reply in a queue group, so that one replica answers; a database
failure is not answered at all (the asker times out and says the lead
service is unavailable), never answered "no such lead".
"""

from __future__ import annotations

from leadline_kit import rpc
from leadline_kit.db import Database
from leadline_lead.leads import repository
from leadline_proto.requests import LeadAddresses, LeadAddressesReply, LeadAddressesRequest

MAX_LEADS = 1000  # as many as one message may name


async def lead_addresses(db: Database, request: LeadAddressesRequest) -> LeadAddressesReply:
    if len(request.lead_ids) > MAX_LEADS:
        raise rpc.Unreadable(f"at most {MAX_LEADS} lead ids")
    async with db.session() as session:
        rows = await repository.names_of(session, request.company_id, request.lead_ids)
        addresses = await repository.addresses_of(session, request.company_id, [r.id for r in rows])
    return LeadAddressesReply(
        leads=[
            LeadAddresses(lead_id=r.id, name=r.name, addresses=addresses.get(r.id, []))
            for r in rows
        ]
    )
