"""Connecting, updating and disconnecting the caller's own mailbox (R1, R3, R5, R9, R10, R11).

Connecting checks both logins first, so that what is saved is known to work
(IMAP must work to sync; SMTP is what Smart Mail goes out through), then
proves the address with them (:mod:`leadline_sync.mailbox.proof`, R29; an
OAuth2 sign-in is proven by its provider instead, see ``oauth.flow``); an
address another user of the company syncs is refused (409).  A new
connection starts a new historical sync: its ``connected_at`` decides which
leads get their full history (R5).  Saving new settings for the connected
address keeps the cursors, so sync resumes where it stopped (R10).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import aiosmtplib
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.errors import Conflict, Unprocessable
from leadline_kit.identity import Identity
from leadline_mail.imap import ImapClient, connect_imap
from leadline_mail.net import ErrorKind, MailConnectionError, TlsMode
from leadline_sync.context import SyncContext
from leadline_sync.credentials import MailboxSecrets
from leadline_sync.logins import (
    ServerLogin,
    certificate_pin,
    check_imap,
    check_smtp,
    imap_settings,
    smtp_session,
)
from leadline_sync.mailbox import repository, service
from leadline_sync.mailbox.fixes import fix_for
from leadline_sync.mailbox.proof import AddressProof, needs_proof, prove_address
from leadline_sync.mailbox.schemas import (
    ConnectionTest,
    ConnectRequest,
    ServerCheck,
    ServerSettingsIn,
)
from leadline_sync.mailbox.service import MailboxRow
from leadline_sync.mailbox.slots import claim_slot, release_slot
from leadline_sync.mailbox.states import INITIAL, MailboxStatus, Slot
from leadline_sync.problems import (
    AddressSyncedByAnotherUser,
    MailboxAlreadyConnected,
    MailboxLoginFailed,
    MailboxNotConnected,
    MailboxSettingsInvalid,
)
from leadline_sync.providers import Provider, ServerPreset, providers

CHECKING_LIMIT = "checking the company's mailbox limit"


@dataclass(frozen=True)
class ServerChoice:
    login: ServerLogin
    self_signed: bool
    expected_pin: str | None


@dataclass(frozen=True)
class MailboxChoice:
    provider: Provider
    address: str
    smtp_use: str
    imap: ServerChoice
    smtp: ServerChoice


def _server(
    side: str, preset: ServerPreset | None, given: ServerSettingsIn | None, request: ConnectRequest
) -> ServerChoice:
    given = given or ServerSettingsIn()
    password = given.password or request.password
    if password is None:
        raise MailboxSettingsInvalid(f"a password is needed for {side.upper()}", server=side)
    if preset is not None:
        host, port, tls = preset.host, preset.port, preset.tls
    else:
        if not given.host or given.port is None or given.use_ssl is None:
            raise MailboxSettingsInvalid(
                f'custom settings need the {side.upper()} host, port and "use SSL"',
                server=side,
            )
        host, port = given.host, given.port
        tls = "implicit" if given.use_ssl else "starttls"
    if given.self_signed and tls == "plain":
        raise MailboxSettingsInvalid("a self-signed certificate needs SSL or STARTTLS")
    mode: TlsMode = tls
    return ServerChoice(
        login=ServerLogin(
            host=host,
            port=port,
            tls=mode,
            username=given.username or request.address,
            password=password.get_secret_value(),
        ),
        self_signed=given.self_signed,
        expected_pin=given.certificate_sha256,
    )


def choose(request: ConnectRequest) -> MailboxChoice:
    provider = providers().get(request.provider)
    if provider is None:
        raise MailboxSettingsInvalid(
            f"unknown provider {request.provider!r}; see GET /v1/mail-sync/providers"
        )
    imap_preset = provider.imap.for_address(request.address) if provider.imap else None
    smtp_preset = provider.smtp.for_address(request.address) if provider.smtp else None
    return MailboxChoice(
        provider=provider,
        address=request.address,
        smtp_use=request.smtp_use,
        imap=_server("imap", imap_preset, request.imap, request),
        smtp=_server("smtp", smtp_preset, request.smtp, request),
    )


async def _pinned(context: SyncContext, server: ServerChoice, protocol: str) -> ServerLogin:
    if not server.self_signed:
        return server.login
    pin = await certificate_pin(server.login, protocol, server.expected_pin, context.settings)
    return dataclasses.replace(server.login, pinned_sha256=pin)


async def _check(
    context: SyncContext, server: ServerChoice, protocol: str
) -> tuple[ServerLogin, str | None]:
    login = await _pinned(context, server, protocol)
    if protocol == "imap":
        return login, await check_imap(login, context.settings)
    await check_smtp(login, context.settings)
    return login, None


def _failure(server: str, error: MailConnectionError) -> Unprocessable:
    return MailboxLoginFailed(
        f"{server.upper()}: {error.user_message}",
        server=server,
        kind=error.kind,
        fix=fix_for(error.kind),
    )


async def test_connection(context: SyncContext, request: ConnectRequest) -> ConnectionTest:
    choice = choose(request)

    async def run(server: ServerChoice, protocol: str) -> ServerCheck:
        try:
            await _check(context, server, protocol)
        except MailConnectionError as error:
            return ServerCheck(
                ok=False, kind=error.kind, message=error.user_message, fix=fix_for(error.kind)
            )
        return ServerCheck(ok=True)

    imap, smtp = await asyncio.gather(run(choice.imap, "imap"), run(choice.smtp, "smtp"))
    return ConnectionTest(ok=imap.ok and smtp.ok, imap=imap, smtp=smtp)


def _as_choice(server: ServerChoice | ServerLogin) -> ServerChoice:
    return server if isinstance(server, ServerChoice) else ServerChoice(server, False, None)


@dataclass(frozen=True)
class Sessions:
    """Both logins, checked and still logged in (the address proof goes through them)."""

    imap: ServerLogin
    smtp: ServerLogin
    sent_folder: str | None
    imap_client: ImapClient
    smtp_client: aiosmtplib.SMTP


@contextlib.asynccontextmanager
async def logged_in(
    context: SyncContext, imap: ServerChoice | ServerLogin, smtp: ServerChoice | ServerLogin
) -> AsyncIterator[Sessions]:
    """Both logins made side by side (pins taken) and kept for the block; 422
    ``mailbox-login-failed`` naming the one that failed."""
    async with contextlib.AsyncExitStack() as stack:

        async def imap_side() -> tuple[ServerLogin, ImapClient, str | None]:
            login = await _pinned(context, _as_choice(imap), "imap")
            client = await connect_imap(imap_settings(login, context.settings))
            stack.push_async_callback(client.logout)
            return login, client, (await client.find_sync_folders()).get("sent")

        async def smtp_side() -> tuple[ServerLogin, aiosmtplib.SMTP]:
            login = await _pinned(context, _as_choice(smtp), "smtp")
            return login, await stack.enter_async_context(smtp_session(login, context.settings))

        imap_result, smtp_result = await asyncio.gather(
            imap_side(), smtp_side(), return_exceptions=True
        )
        for side, result in (("imap", imap_result), ("smtp", smtp_result)):
            if isinstance(result, MailConnectionError):
                raise _failure(side, result)
            if isinstance(result, BaseException):
                raise result
        assert not isinstance(imap_result, BaseException) and not isinstance(
            smtp_result, BaseException
        )
        (imap_login, client, sent_folder), (smtp_login, smtp_client) = imap_result, smtp_result
        yield Sessions(imap_login, smtp_login, sent_folder, client, smtp_client)


async def check_logins(
    context: SyncContext, imap: ServerChoice | ServerLogin, smtp: ServerChoice | ServerLogin
) -> tuple[ServerLogin, ServerLogin, str | None]:
    """Both logins checked side by side (pins taken); 422 ``mailbox-login-failed`` naming the one
    that failed."""
    async with logged_in(context, imap, smtp) as sessions:
        return sessions.imap, sessions.smtp, sessions.sent_folder


@dataclass(frozen=True)
class CheckedMailbox:
    """What connecting saves: settings whose logins were just checked, and the secrets they used."""

    provider: Provider
    address: str
    smtp_use: str
    imap: ServerLogin
    smtp: ServerLogin
    sent_folder: str | None
    secrets: MailboxSecrets
    auth: str = "password"  # or "oauth2"
    oauth_expires_at: datetime | None = None
    # how the address was proven just now (R29); None: the logins did not change since their proof
    address_proven_by: AddressProof | None = None


async def connect(context: SyncContext, caller: Identity, request: ConnectRequest) -> uuid.UUID:
    """Save (after checking the logins and proving the address) the caller's mailbox settings;
    returns its id.

    One login each: the sessions that checked the logins prove the address."""
    choice = choose(request)
    async with logged_in(context, choice.imap, choice.smtp) as sessions:
        async with context.db.session() as session:
            row = await repository.active_mailbox(session, caller.company_id, caller.user_id)
            await _refuse_address(session, caller.company_id, caller.user_id, row, choice.address)
        proven_by: AddressProof | None = None
        if needs_proof(row, sessions.imap, sessions.smtp):
            proof = await prove_address(
                choice.address,
                sessions.imap_client,
                sessions.smtp_client,
                sessions.imap,
                context.settings,
            )
            context.chore(proof.take_back(), "sync-address-proof-deletion")
            proven_by = "message"
    return await save(
        context,
        caller.company_id,
        caller.user_id,
        CheckedMailbox(
            provider=choice.provider,
            address=choice.address,
            smtp_use=choice.smtp_use,
            imap=sessions.imap,
            smtp=sessions.smtp,
            sent_folder=sessions.sent_folder,
            address_proven_by=proven_by,
            secrets=MailboxSecrets(
                imap_password=sessions.imap.password, smtp_password=sessions.smtp.password
            ),
        ),
    )


async def _refuse_address(
    session: AsyncSession,
    company_id: uuid.UUID,
    user_id: uuid.UUID,
    own: MailboxRow | None,
    address: str,
) -> None:
    """409 for another address than the connected one, or for one that another user of the company
    syncs."""
    if own is not None and own.address != address:
        raise MailboxAlreadyConnected(
            (
                f"Mail Sync is connected for {own.address}; disable it before connecting another "
                f"address"
            ),
        )
    if await repository.synced_by_another_user(session, company_id, user_id, address):
        raise _taken(address)


def _taken(address: str) -> Conflict:
    return AddressSyncedByAnotherUser(
        f"{address} is already synced by another user of the company",
        kind=ErrorKind.ADDRESS_TAKEN,
        fix=fix_for(ErrorKind.ADDRESS_TAKEN),
    )


async def save(
    context: SyncContext, company_id: uuid.UUID, user_id: uuid.UUID, checked: CheckedMailbox
) -> uuid.UUID:
    """Connect the user's mailbox with checked settings, or update them (R5, R9, R10); returns its
    id."""
    try:
        return await _save(context, company_id, user_id, checked)
    except IntegrityError as exc:
        if "uq_mailbox_address_connected" not in str(exc.orig):
            raise
        raise _taken(checked.address) from None  # a racing connect of the same address won


async def _save(
    context: SyncContext, company_id: uuid.UUID, user_id: uuid.UUID, checked: CheckedMailbox
) -> uuid.UUID:
    imap_login, smtp_login = checked.imap, checked.smtp
    now = context.clock()
    async with context.db.session() as session:
        row = await repository.active_mailbox(session, company_id, user_id, for_update=True)
        await _refuse_address(session, company_id, user_id, row, checked.address)
        mailbox_id = row.id if row is not None else uuid.uuid4()
        sealed = context.cipher.seal(company_id, mailbox_id, checked.secrets)
        values = dict(
            provider=checked.provider.id,
            smtp_use=checked.smtp_use,
            imap_host=imap_login.host,
            imap_port=imap_login.port,
            imap_tls=imap_login.tls,
            imap_username=imap_login.username,
            imap_pinned_sha256=imap_login.pinned_sha256,
            smtp_host=smtp_login.host,
            smtp_port=smtp_login.port,
            smtp_tls=smtp_login.tls,
            smtp_username=smtp_login.username,
            smtp_pinned_sha256=smtp_login.pinned_sha256,
            credential_key_id=sealed.key_id,
            credential_wrapped_key=sealed.wrapped_key,
            credential_ciphertext=sealed.ciphertext,
            sent_folder=checked.sent_folder,
            provider_saves_sent=checked.provider.provider_saves_sent,
            auth=checked.auth,
            oauth_expires_at=checked.oauth_expires_at,
            failures=0,
            failing_since=None,
            next_attempt_at=now,
        )
        if checked.address_proven_by is not None:
            values.update(address_proven_at=now, address_proven_by=checked.address_proven_by)
        if row is None:
            await repository.insert_mailbox(
                session,
                id=mailbox_id,
                company_id=company_id,
                user_id=user_id,
                address=checked.address,
                status=INITIAL,
                status_reason=CHECKING_LIMIT,
                slot=Slot.UNCLAIMED,
                connected_at=now,
                created_at=now,
                updated_at=now,
                **values,
            )
            created = await repository.mailbox_by_id(session, mailbox_id)
            assert created is not None
            await service.announce_created(session, created)
            slot = Slot.UNCLAIMED
        else:
            await service.update_settings(session, row, now, values)
            slot = Slot(row.slot)
            if row.status == MailboxStatus.CONNECTION_FAILED:
                # its slot was given back when retries stopped: ask for one again (R8, R9)
                slot = Slot.UNCLAIMED
                await service.transition(
                    session, row, MailboxStatus.PENDING, CHECKING_LIMIT, now, slot=slot
                )
            elif row.status == MailboxStatus.ERROR and row.slot == Slot.GRANTED:
                await service.transition(session, row, MailboxStatus.ENABLED, "", now)
    if slot == Slot.UNCLAIMED:
        await claim_slot(context, company_id, mailbox_id)
    context.wake.set()
    return mailbox_id


async def disconnect(context: SyncContext, caller: Identity, keep_history: bool) -> None:
    async with context.db.session() as session:
        row = await repository.active_mailbox(
            session, caller.company_id, caller.user_id, for_update=True
        )
        if row is None:
            raise MailboxNotConnected("Mail Sync is not connected")
        await service.disconnect(session, row, keep_history, context.clock())
        releasing = row.slot in (Slot.GRANTED, Slot.PENDING)
    if releasing:
        await release_slot(context, caller.company_id, row.id)
