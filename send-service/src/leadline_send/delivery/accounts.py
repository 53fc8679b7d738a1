"""Which account a message goes out through (R12, R13, R15).

Personal mail goes through the sender's synced mailbox with the synced
address as From; without a synced mailbox, through the company's active
``customer_service`` accounts.  Marketing mail goes through the synced mailbox
only when its SMTP use is ``all``; otherwise through the company's active
``campaigns`` accounts in display order, the next one taking over when one is
out of quota.  A company account sends only once it is active *and* its test
email's confirmation code came back, and never while it is in error: one whose
stored password does not decrypt is marked so (``error``, with the fix) the
first time it is read, and left out until its password is entered again.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client

from leadline_kit import rpc
from leadline_kit.sealing import CredentialError
from leadline_mail.net import TlsMode
from leadline_proto.events import MailboxStatus
from leadline_proto.requests import MailboxSmtpReply, MailboxSmtpRequest, QuotaReserveRequest
from leadline_proto.subjects import RPC_MAILBOX_SMTP
from leadline_send.accounts import repository as accounts_repository
from leadline_send.credentials import CredentialKeys
from leadline_send.database import Executor
from leadline_send.delivery.smtp import SmtpEndpoint
from leadline_send.messages.composition import Sender

UNDECRYPTABLE_FIX = (
    "the stored password of this SMTP account cannot be decrypted (its encryption key is no longer "
    "configured, or the stored value was altered): enter the account's password again (PATCH "
    "/v1/smtp-accounts/{id} with "
    '"password")'
)


class MailboxUnavailable(Exception):
    """The sync service did not answer for the sender's mailbox."""


@dataclass(frozen=True)
class SentFolder:
    """Where a copy of the sent message is appended (IMAP), when the provider does not save it
    itself."""

    host: str
    port: int
    tls: TlsMode
    username: str
    password: str = field(repr=False)
    pinned_sha256: str | None
    folder: str
    access_token: str | None = field(default=None, repr=False)  # a mailbox signed in with OAuth2


@dataclass(frozen=True)
class SendingAccount:
    key: str
    provider: str
    endpoint: SmtpEndpoint
    sender: Sender
    account_type: str | None = None
    mailbox_id: uuid.UUID | None = None
    smtp_account_id: uuid.UUID | None = None
    default_cc: tuple[str, ...] = ()
    default_bcc: tuple[str, ...] = ()
    overrides: dict[str, int] = field(default_factory=dict)
    month_start_day: int | None = None
    sent_folder: SentFolder | None = None

    def quota_request(
        self,
        company_id: uuid.UUID,
        user_id: uuid.UUID,
        recipients: int,
        size_bytes: int,
        messages: int = 1,
        largest_recipients: int | None = None,
    ) -> QuotaReserveRequest:
        return QuotaReserveRequest(
            company_id=company_id,
            account_key=self.key,
            provider=self.provider,
            recipients=recipients,
            size_bytes=size_bytes,
            messages=messages,
            largest_recipients=largest_recipients,
            user_id=user_id,
            overrides=self.overrides,
            month_start_day=self.month_start_day,
        )


class MailboxDirectory:
    """Asks the sync service for a user's SMTP settings; answers are kept briefly (they hold a
    password).

    An answer older than ``keep_seconds`` is asked again; while the sync service does not answer
    (busy or restarting), the last answer serves for up to ``stale_seconds`` more, so that a busy
    sync service does not refuse a sender whose mailbox it confirmed a moment ago.
    """

    def __init__(
        self, nc: Client, timeout: float, keep_seconds: float = 10.0, stale_seconds: float = 60.0
    ) -> None:
        self.nc = nc
        self.timeout = timeout
        self.keep_seconds = keep_seconds
        self.stale_seconds = stale_seconds
        self._cache: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, MailboxSmtpReply]] = {}

    async def lookup(self, company_id: uuid.UUID, user_id: uuid.UUID) -> MailboxSmtpReply:
        cached = self._cache.get((company_id, user_id))
        if cached and time.monotonic() - cached[0] < self.keep_seconds:
            return cached[1]
        request = MailboxSmtpRequest(company_id=company_id, user_id=user_id)
        try:
            reply = await rpc.ask(
                self.nc, RPC_MAILBOX_SMTP, request, MailboxSmtpReply, self.timeout
            )
        except rpc.Unanswered as exc:
            if cached and time.monotonic() - cached[0] < self.keep_seconds + self.stale_seconds:
                return cached[1]
            raise MailboxUnavailable(
                f"the sync service did not answer for the sender's mailbox ({exc.reason})"
            ) from exc
        self._cache[(company_id, user_id)] = (time.monotonic(), reply)
        return reply


def mailbox_account(reply: MailboxSmtpReply) -> SendingAccount:
    """The synced mailbox's SMTP login (and IMAP, for the Sent copy): its passwords, or for a
    mailbox signed in with OAuth2 the live access token the sync service gave (XOAUTH2)."""
    assert reply.address and reply.smtp_host and reply.smtp_port and reply.smtp_tls
    token = reply.access_token if reply.auth == "oauth2" else None
    sent_folder = None
    if not reply.provider_saves_sent and reply.imap_host and reply.imap_port and reply.imap_tls:
        sent_folder = SentFolder(
            host=reply.imap_host,
            port=reply.imap_port,
            tls=reply.imap_tls,
            username=reply.imap_username or "",
            password=reply.imap_password or "",
            pinned_sha256=reply.imap_pinned_sha256,
            folder=reply.sent_folder or "Sent",
            access_token=token,
        )
    return SendingAccount(
        key=f"mailbox:{reply.mailbox_id}",
        provider=reply.provider or "custom",
        mailbox_id=reply.mailbox_id,
        endpoint=SmtpEndpoint(
            host=reply.smtp_host,
            port=reply.smtp_port,
            tls=reply.smtp_tls,
            username=reply.smtp_username or "",
            password=reply.smtp_password or "",
            pinned_sha256=reply.smtp_pinned_sha256,
            access_token=token,
        ),
        sender=Sender(from_email=reply.address),
        sent_folder=sent_folder,
    )


def company_account(row: Any, keys: CredentialKeys) -> SendingAccount:
    password = (
        keys.open(row.password_sealed, row.key_id, row.company_id, row.id)
        if row.password_sealed is not None
        else ""
    )
    return SendingAccount(
        key=f"smtp:{row.id}",
        provider="custom",
        smtp_account_id=row.id,
        account_type=row.type,
        endpoint=SmtpEndpoint(
            host=row.host,
            port=row.port,
            tls=row.tls,
            username=row.username,
            password=password,
            pinned_sha256=row.pinned_sha256,
            timeout=float(row.timeout_seconds),
        ),
        sender=Sender(
            from_email=row.from_email,
            from_name=row.from_name,
            return_path=row.return_path,
            precedence=row.precedence,
            unsubscribe_url=row.unsubscribe_url,
            utm=dict(row.utm),
        ),
        default_cc=tuple(row.default_cc),
        default_bcc=tuple(row.default_bcc),
        overrides={"messages_per_month": row.max_per_month} if row.max_per_month else {},
        month_start_day=row.month_start_day,
    )


async def readable_accounts(
    session: Executor, keys: CredentialKeys, rows: list[Any]
) -> list[SendingAccount]:
    """The sending accounts of ``rows`` whose passwords open; the others are put in error, with the
    fix."""
    accounts, unreadable = [], []
    for row in rows:
        try:
            accounts.append(company_account(row, keys))
        except CredentialError:
            unreadable.append(row.id)
    if unreadable:
        await accounts_repository.mark_unreadable(session, unreadable, UNDECRYPTABLE_FIX)
    return accounts


@dataclass(frozen=True)
class Route:
    """The accounts a message may use, best first, or why there is none."""

    accounts: list[SendingAccount]
    reason: str = ""


async def company_accounts(
    session: Executor, keys: CredentialKeys, company_id: uuid.UUID, account_type: str
) -> list[SendingAccount]:
    rows = await accounts_repository.sending_accounts(session, company_id, account_type)
    return await readable_accounts(session, keys, rows)


async def route_for(
    session: Executor,
    keys: CredentialKeys,
    directory: MailboxDirectory,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    category: str,
) -> Route:
    mailbox = await directory.lookup(company_id, user_id)
    if mailbox.found and (category == "personal" or mailbox.smtp_use == "all"):
        if mailbox.status != MailboxStatus.ENABLED:
            return Route(
                [], f"your synced mailbox is {mailbox.status}; fix it under mail sync first"
            )
        return Route([mailbox_account(mailbox)])
    account_type = "customer_service" if category == "personal" else "campaigns"
    accounts = await company_accounts(session, keys, company_id, account_type)
    if not accounts:
        usable = (
            f"{account_type} SMTP account (active, confirmed, not in error: see GET "
            f"/v1/smtp-accounts)"
        )
        return Route(
            [], f"no synced mailbox and no {usable}" if category == "personal" else f"no {usable}"
        )
    return Route(accounts)


async def account_for_key(
    session: Executor,
    keys: CredentialKeys,
    directory: MailboxDirectory,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    key: str,
) -> SendingAccount | None:
    """The account a queued message names, as it is now (None if it is gone or no longer usable)."""
    kind, _, ident = key.partition(":")
    if kind == "mailbox":
        mailbox = await directory.lookup(company_id, user_id)
        if (
            not mailbox.found
            or str(mailbox.mailbox_id) != ident
            or mailbox.status != MailboxStatus.ENABLED
        ):
            return None
        return mailbox_account(mailbox)
    row = await accounts_repository.sending_account(session, company_id, uuid.UUID(ident))
    found = await readable_accounts(session, keys, [row]) if row else []
    return found[0] if found else None


class Routes:
    """:func:`route_for`, kept a few seconds per sender and category: asked for every message."""

    def __init__(
        self, keys: CredentialKeys, directory: MailboxDirectory, keep_seconds: float = 5.0
    ) -> None:
        self.keys = keys
        self.directory = directory
        self.keep_seconds = keep_seconds
        self._kept: dict[tuple[uuid.UUID, uuid.UUID, str], tuple[float, Route]] = {}

    async def route(
        self, session: Executor, company_id: uuid.UUID, user_id: uuid.UUID, category: str
    ) -> Route:
        key = (company_id, user_id, category)
        kept = self._kept.get(key)
        if kept and kept[0] > time.monotonic():
            return kept[1]
        route = await route_for(session, self.keys, self.directory, company_id, user_id, category)
        if route.accounts:
            self._kept[key] = (time.monotonic() + self.keep_seconds, route)
        return route

    def forget(self) -> None:
        self._kept.clear()
