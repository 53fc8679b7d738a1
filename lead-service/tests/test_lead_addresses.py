"""RPC_LEAD_ADDRESSES: a lead's addresses for a service that has not applied its lead.created yet."""

from __future__ import annotations

import uuid

import httpx
import nats
from leadtest import create_lead

from leadline_kit.identity import Identity
from leadline_proto.requests import LeadAddressesReply, LeadAddressesRequest
from leadline_proto.subjects import RPC_LEAD_ADDRESSES


async def ask(nats_url: str, payload: bytes) -> LeadAddressesReply:
    nc = await nats.connect(nats_url)
    try:
        return LeadAddressesReply.model_validate_json(
            (await nc.request(RPC_LEAD_ADDRESSES, payload, timeout=5)).data
        )
    finally:
        await nc.close()


async def test_the_company_s_leads_are_answered_with_their_addresses(
    api: httpx.AsyncClient, admin: Identity, nats_url: str
) -> None:
    lead = await create_lead(api, "Ana@Example.com", "ana@other.example", name="Ana")
    other = await create_lead(api, "bo@example.com", name="Bo")
    nobody = uuid.uuid4()
    request = LeadAddressesRequest(
        company_id=admin.company_id, lead_ids=[uuid.UUID(lead["id"]), nobody]
    )
    reply = await ask(nats_url, request.model_dump_json().encode())
    assert [(str(x.lead_id), x.name, x.addresses) for x in reply.leads] == [
        (lead["id"], "Ana", ["ana@example.com", "ana@other.example"])
    ]

    # scoped by company: another company asking for the same ids learns nothing
    stranger = LeadAddressesRequest(
        company_id=uuid.uuid4(), lead_ids=[uuid.UUID(lead["id"]), uuid.UUID(other["id"])]
    )
    assert (await ask(nats_url, stranger.model_dump_json().encode())).leads == []

    unreadable = await ask(nats_url, b'{"company_id": "x"}')
    assert unreadable.leads == [] and unreadable.detail.startswith("invalid request")
