"""What the endpoints need from the running service, as one FastAPI dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.db import request_session
from leadline_send.config import Settings
from leadline_send.credentials import CredentialKeys
from leadline_send.delivery.accounts import MailboxDirectory
from leadline_send.delivery.quota import QuotaClient
from leadline_send.delivery.smtp import SmtpPolicy
from leadline_send.delivery.worker import Delivery


@dataclass
class SendContext:
    settings: Settings
    keys: CredentialKeys
    policy: SmtpPolicy
    quota: QuotaClient
    mailboxes: MailboxDirectory
    delivery: Delivery


def send_context(request: Request) -> SendContext:
    context: SendContext = request.app.state.runtime.extras["send"]
    return context


Context = Annotated[SendContext, Depends(send_context)]


# The kit's ``Session`` dependency commits after the response is sent (FastAPI's default "request" scope
# for dependencies with yield), so a client could see 201 before the row is committed, or a 2xx for a
# commit that then fails.  Scope "function" commits before the response goes out.
Session = Annotated[AsyncSession, Depends(request_session, scope="function")]
