"""``RPC_LEAD_ADDRESSES``: the send service asks for leads whose ``lead.created`` it has not applied yet.

Leads are announced by events, and a service that learns them from its
stream may be a moment behind the API: a CRM that creates a lead and mails
it in the next request would otherwise be refused.  Answered over NATS core
request/reply in a queue group, so that one replica answers; a database
failure is not answered at all (the asker times out and says the lead
service is unavailable), never answered "no such lead".
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from leadline_kit.db import Database
from leadline_lead.leads import repository
from leadline_lead.models import lead
from leadline_proto.requests import LeadAddresses, LeadAddressesReply, LeadAddressesRequest
from leadline_proto.subjects import RPC_LEAD_ADDRESSES

log = logging.getLogger("leadline.lead.addresses")

QUEUE_GROUP = "leadline-lead"
MAX_LEADS = 1000  # as many as one message may name

Asked = TypeVar("Asked", bound=BaseModel)


async def serve(
    nc: Client,
    subject: str,
    request_type: type[Asked],
    answer: Callable[[Asked], Awaitable[BaseModel]],
    refusal: Callable[[str], BaseModel],
) -> Subscription:
    """Answer ``subject`` in the lead service's queue group.

    A request that does not parse (or that ``answer`` refuses with ValueError) gets ``refusal(why)``;
    any other failure is not answered at all: the asker times out and says the lead service is
    unavailable, never taking a made-up answer for the truth.
    """

    async def on_request(msg: Msg) -> None:
        try:
            reply = await answer(request_type.model_validate_json(msg.data))
        except (ValidationError, ValueError) as exc:
            await msg.respond(refusal(f"invalid request: {str(exc)[:300]}").model_dump_json().encode())
            return
        except Exception:
            log.exception("%s: request failed", subject)
            return
        await msg.respond(reply.model_dump_json().encode())

    subscription = await nc.subscribe(subject, queue=QUEUE_GROUP, cb=on_request)
    await nc.flush()  # the server knows the subscription before the service says it is ready
    return subscription


async def lead_addresses(db: Database, request: LeadAddressesRequest) -> LeadAddressesReply:
    async with db.session() as session:
        rows = (
            await session.execute(
                select(lead.c.id, lead.c.name).where(
                    lead.c.company_id == request.company_id, lead.c.id.in_(request.lead_ids)
                )
            )
        ).all()
        addresses = await repository.addresses_of(session, [r.id for r in rows])
    return LeadAddressesReply(
        leads=[LeadAddresses(lead_id=r.id, name=r.name, addresses=addresses.get(r.id, [])) for r in rows]
    )


async def serve_lead_addresses(nc: Client, db: Database) -> Subscription:
    async def answer(request: LeadAddressesRequest) -> LeadAddressesReply:
        if len(request.lead_ids) > MAX_LEADS:
            raise ValueError(f"at most {MAX_LEADS} lead ids")
        return await lead_addresses(db, request)

    return await serve(nc, RPC_LEAD_ADDRESSES, LeadAddressesRequest, answer, lambda why: LeadAddressesReply(detail=why))
