"""The send service: Smart Mail queue and SMTP delivery.

Run with ``uvicorn --factory leadline_send.main:create_app``.
"""

from __future__ import annotations

from fastapi import FastAPI

from leadline_kit.service import Runtime, create_service_app
from leadline_mail.net import parse_allowlist
from leadline_send.accounts.endpoints import router as accounts_router
from leadline_send.config import Settings
from leadline_send.consumers import consumers
from leadline_send.context import SendContext
from leadline_send.credentials import CredentialKeys
from leadline_send.delivery.accounts import MailboxDirectory, Routes
from leadline_send.delivery.quota import QuotaClient
from leadline_send.delivery.smtp import SmtpPolicy
from leadline_send.delivery.worker import Delivery
from leadline_send.messages.endpoints import router as messages_router
from leadline_send.messages.leads import LeadDirectory
from leadline_send.models import outbox


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    keys = CredentialKeys(settings.credential_keys.get_secret_value())
    policy = SmtpPolicy(
        allow_networks=parse_allowlist(settings.mail_allow_networks),
        allow_plaintext=settings.smtp_allow_plaintext,
        cafile=settings.mail_cafile,
        local_hostname=settings.message_domain,
    )

    async def on_start(runtime: Runtime) -> None:
        quota = QuotaClient(runtime.nats, settings.rpc_timeout_seconds)
        mailboxes = MailboxDirectory(runtime.nats, settings.rpc_timeout_seconds)
        delivery = Delivery(
            db=runtime.db,
            settings=settings,
            quota=quota,
            mailboxes=mailboxes,
            keys=keys,
            policy=policy,
            routes=Routes(keys, mailboxes),
            wake_relay=runtime.wake_relay,
        )
        runtime.context = SendContext(
            settings=settings,
            keys=keys,
            policy=policy,
            quota=quota,
            mailboxes=mailboxes,
            delivery=delivery,
            leads=LeadDirectory(runtime.db, runtime.nats, settings.rpc_timeout_seconds),
        )
        await delivery.start()
        # Recover what a previous process left in "sending" before this one claims anything.
        await delivery.recover_once()
        runtime.spawn(delivery.run_recovery(), "send-recovery")
        for number in range(settings.smtp_connections):
            runtime.spawn(delivery.run_worker(number), f"send-worker-{number}")

    async def on_stop(runtime: Runtime) -> None:
        context = runtime.context
        if isinstance(context, SendContext):
            await context.delivery.stop(settings.stop_grace_seconds)
            for task in runtime.tasks:
                task.cancel()
            await context.delivery.close()

    return create_service_app(
        name="send",
        settings=settings,
        schema="send",
        outbox=outbox,
        routers=[messages_router, accounts_router],
        consumers=lambda runtime: consumers(
            runtime, settings.consumer_prefix, settings.consumer_deliver_since
        ),
        on_start=on_start,
        on_stop=on_stop,
        title="Leadline send service",
    )
