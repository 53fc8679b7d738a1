"""What the endpoints need from the running service, as one FastAPI dependency."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from leadline_send.config import Settings
from leadline_send.credentials import CredentialKeys
from leadline_send.delivery.accounts import MailboxDirectory
from leadline_send.delivery.quota import QuotaClient
from leadline_send.delivery.smtp import SmtpPolicy
from leadline_send.delivery.worker import Delivery
from leadline_send.messages.leads import LeadDirectory


@dataclass
class SendContext:
    settings: Settings
    keys: CredentialKeys
    policy: SmtpPolicy
    quota: QuotaClient
    mailboxes: MailboxDirectory
    delivery: Delivery
    leads: LeadDirectory
    # held while a message is built and for one turn of the event loop after (messages.service)
    building: asyncio.Lock = field(default_factory=asyncio.Lock)


async def send_context(request: Request) -> SendContext:
    context: SendContext = request.app.state.runtime.context_of(SendContext)
    return context


Context = Annotated[SendContext, Depends(send_context)]
