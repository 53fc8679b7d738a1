"""Events the quota service applies: company mailbox limits and disconnected mailboxes (R9)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.consumer import EventConsumer, Handlers
from leadline_kit.service import Runtime
from leadline_proto.events import CompanyUpdatedV1, MailboxDisconnectedV1
from leadline_quota.clock import Clock, QuotaContext
from leadline_quota.config import Settings
from leadline_quota.mailbox_slots import service as mailbox_slots
from leadline_quota.models import processed


def mailbox_limit_handlers(clock: Clock) -> Handlers:
    async def set_limit(session: AsyncSession, event: CompanyUpdatedV1) -> None:
        await mailbox_slots.set_mailbox_limit(
            session, event.company_id, event.payload.mailbox_limit, event.occurred_at, clock()
        )

    async def release(session: AsyncSession, event: MailboxDisconnectedV1) -> None:
        # the sync service also releases by RPC; this covers a release that never arrived
        await mailbox_slots.release(
            session,
            event.company_id,
            event.payload.mailbox_id,
            clock(),
            claimed_before=event.occurred_at,
        )

    return Handlers().on(CompanyUpdatedV1, set_limit).on(MailboxDisconnectedV1, release)


def quota_consumers(runtime: Runtime) -> Sequence[EventConsumer]:
    clock = runtime.context_of(QuotaContext).clock
    settings = runtime.settings
    assert isinstance(settings, Settings)
    return [
        EventConsumer(
            db=runtime.db,
            js=runtime.jetstream,
            processed=processed,
            durable=settings.consumer_prefix,
            handlers=mailbox_limit_handlers(clock),
        )
    ]
