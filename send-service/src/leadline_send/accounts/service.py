"""Company SMTP accounts (R15): validation, sealed passwords, test connection, test email and
confirmation.

An account is usable for sending when it is active and confirmed.  It is
confirmed when the code of its test email is typed back; changing where or as
whom it connects (host, port, TLS, pin, user, password, from address) asks for
a new confirmation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from leadline_kit.errors import Unprocessable
from leadline_kit.sealing import CredentialError
from leadline_mail.net import MailConnectionError, normalize_fingerprint
from leadline_send.accounts import repository
from leadline_send.accounts.schemas import (
    ConnectionTest,
    SmtpAccountFields,
    SmtpAccountIn,
    SmtpAccountOut,
    Utm,
)
from leadline_send.context import SendContext
from leadline_send.delivery.accounts import UNDECRYPTABLE_FIX, company_account
from leadline_send.delivery.smtp import open_session, probe_endpoint
from leadline_send.messages.composition import (
    Draft,
    Recipient,
    Sender,
    build_message,
    check_address,
    check_header_value,
)
from leadline_send.problems import (
    AccountInError,
    InvalidFingerprint,
    InvalidUrl,
    PlaintextNotAllowed,
    SmtpAccountNotFound,
    SmtpTestFailed,
    WrongConfirmationCode,
)

RECONFIRM_FIELDS = {"host", "port", "tls", "pinned_sha256", "username", "password", "from_email"}
CODE_LIFETIME = timedelta(minutes=30)


def to_out(row: Row[Any]) -> SmtpAccountOut:
    return SmtpAccountOut(
        id=row.id,
        name=row.name,
        type=row.type,
        host=row.host,
        port=row.port,
        tls=row.tls,
        pinned_sha256=row.pinned_sha256,
        username=row.username,
        has_password=row.password_sealed is not None,
        from_email=row.from_email,
        from_name=row.from_name,
        active=row.active,
        confirmed=row.confirmed_at is not None,
        timeout_seconds=row.timeout_seconds,
        default_cc=row.default_cc,
        default_bcc=row.default_bcc,
        max_per_month=row.max_per_month,
        month_start_day=row.month_start_day,
        unsubscribe_url=row.unsubscribe_url,
        precedence=row.precedence,
        return_path=row.return_path,
        utm=Utm(**row.utm),
        display_order=row.display_order,
        error=row.error,
        error_at=row.error_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _column_values(  # noqa: C901 - 15, older than the limit
    fields: SmtpAccountFields, context: SendContext, company_id: uuid.UUID, account_id: uuid.UUID
) -> dict[str, Any]:
    """Validated column values for the fields that were given."""
    given = fields.model_dump(exclude_unset=True)
    values: dict[str, Any] = {}
    for name, value in given.items():
        if name in ("name", "host", "username", "from_name") and value is not None:
            values[name] = (
                check_header_value(name, value).strip()
                if name == "host"
                else check_header_value(name, value)
            )
        elif name in ("username", "from_name") and value is None:
            values[name] = ""
        elif name in ("from_email", "return_path") and value is not None:
            values[name] = check_address(name, value)
        elif name in ("default_cc", "default_bcc") and value is not None:
            values[name] = [check_address(f"{name}[{n}]", a) for n, a in enumerate(value)]
        elif name == "pinned_sha256" and value is not None:
            try:
                values[name] = normalize_fingerprint(value)
            except ValueError as exc:
                raise InvalidFingerprint(f"pinned_sha256: {exc}") from None
        elif name == "unsubscribe_url" and value is not None:
            values[name] = _unsubscribe_target(value)
        elif name == "password":
            values["error"], values["error_at"] = None, None  # the one fix of an account in error
            if value:
                values["password_sealed"], values["key_id"] = context.keys.seal(
                    value, company_id, account_id
                )
            else:
                values["password_sealed"], values["key_id"] = None, None
        elif name == "utm":
            utm = {k: check_header_value(k, v) for k, v in (value or {}).items() if v}
            values[name] = utm
        elif name == "tls" and value == "plain" and not context.settings.smtp_allow_plaintext:
            raise PlaintextNotAllowed(
                "SMTP without TLS is not allowed on this installation; use implicit or starttls",
            )
        elif name in ("default_cc", "default_bcc", "utm") and value is None:
            values[name] = [] if name != "utm" else {}
        elif (
            name
            in (
                "name",
                "type",
                "host",
                "port",
                "tls",
                "from_email",
                "active",
                "timeout_seconds",
                "month_start_day",
                "display_order",
            )
            and value is None
        ):
            raise Unprocessable(f"{name} cannot be empty")
        else:
            values[name] = value
    return values


def _unsubscribe_target(value: str) -> str:
    """A URI for ``List-Unsubscribe`` as it goes out: https, http or mailto, nothing that ends its
    ``<...>``."""
    check_header_value("unsubscribe_url", value)
    if _NOT_IN_LIST_URI.search(value):
        raise InvalidUrl("unsubscribe_url must not contain spaces, '<', '>' or ','")
    if value.startswith("mailto:"):
        check_address("unsubscribe_url", value[len("mailto:") :].partition("?")[0])
    elif not value.startswith(("https://", "http://")):
        raise InvalidUrl("unsubscribe_url must be an https, http or mailto URL")
    return value


_NOT_IN_LIST_URI = re.compile(r"[\s<>,]")


async def get(session: AsyncSession, company_id: uuid.UUID, account_id: uuid.UUID) -> Row[Any]:
    row = await repository.account(session, company_id, account_id)
    if row is None:
        raise SmtpAccountNotFound("no such SMTP account")
    return row


async def list_accounts(session: AsyncSession, company_id: uuid.UUID) -> list[Row[Any]]:
    return await repository.accounts(session, company_id)


async def create(
    session: AsyncSession, context: SendContext, company_id: uuid.UUID, body: SmtpAccountIn
) -> Row[Any]:
    account_id = uuid.uuid4()
    values = _column_values(body, context, company_id, account_id)
    for required in ("name", "type", "host", "port", "tls", "from_email"):
        values.setdefault(required, getattr(body, required))
    if values["tls"] == "plain" and not context.settings.smtp_allow_plaintext:
        raise PlaintextNotAllowed("SMTP without TLS is not allowed on this installation")
    await repository.insert_account(session, company_id, account_id, values)
    return await get(session, company_id, account_id)


async def patch(
    session: AsyncSession,
    context: SendContext,
    company_id: uuid.UUID,
    account_id: uuid.UUID,
    body: SmtpAccountFields,
) -> Row[Any]:
    await get(session, company_id, account_id)
    values = _column_values(body, context, company_id, account_id)
    if RECONFIRM_FIELDS & body.model_fields_set:
        values.update(confirmed_at=None, confirmation_code_hash=None, confirmation_expires_at=None)
    if values:
        await repository.update_account(
            session, company_id, account_id, **values, updated_at=datetime.now(UTC)
        )
    return await get(session, company_id, account_id)


async def remove(session: AsyncSession, company_id: uuid.UUID, account_id: uuid.UUID) -> None:
    await get(session, company_id, account_id)
    await repository.delete_account(session, company_id, account_id)


async def test_connection(context: SendContext, row: Row[Any]) -> ConnectionTest:
    try:
        await probe_endpoint(row.host, row.port, float(row.timeout_seconds), context.policy)
    except MailConnectionError as exc:
        return ConnectionTest(reachable=False, detail=exc.user_message)
    return ConnectionTest(reachable=True, detail=f"{row.host}:{row.port} accepted a connection")


def _code_hash(account_id: uuid.UUID, code: str) -> str:
    return hashlib.sha256(account_id.bytes + code.encode()).hexdigest()


async def send_test_email(
    session: AsyncSession, context: SendContext, row: Row[Any], to: str
) -> None:
    """Send a confirmation code through the account itself; it becomes confirmed when the code comes
    back.

    An account whose password does not decrypt is put in error here (and the problem returned rather
    than raised by the endpoint, so that the error state commits)."""
    address = check_address("to", to)
    if row.error:
        raise AccountInError(row.error)
    code = f"{secrets.randbelow(10**6):06d}"
    try:
        account = company_account(row, context.keys)
    except CredentialError:
        await repository.update_account(
            session, row.company_id, row.id, error=UNDECRYPTABLE_FIX, error_at=datetime.now(UTC)
        )
        raise AccountInError(UNDECRYPTABLE_FIX) from None
    built = build_message(
        Draft(
            category="personal",
            to=(Recipient(address),),
            subject="Leadline SMTP account confirmation code",
            text=f'Your confirmation code for the SMTP account "{row.name}" is {code}.\n'
            "Type it into Leadline to activate the account.\n",
        ),
        Sender(from_email=row.from_email, from_name=row.from_name),
        message_id=f"<{uuid.uuid4().hex}@{context.settings.message_domain}>",
        date=datetime.now(UTC),
        unsubscribe_link=None,
    )
    try:
        smtp = await open_session(account.endpoint, context.policy)
        try:
            await smtp.sendmail(built.envelope_from, built.recipients, built.raw)
        finally:
            smtp.close()
    except MailConnectionError as exc:
        raise SmtpTestFailed(exc.user_message) from None
    except Exception as exc:  # every SMTP answer or network failure is shown to the admin
        raise SmtpTestFailed(f"the test email could not be sent: {exc}") from None
    await repository.update_account(
        session,
        row.company_id,
        row.id,
        confirmation_code_hash=_code_hash(row.id, code),
        confirmation_expires_at=datetime.now(UTC) + CODE_LIFETIME,
    )


async def confirm(session: AsyncSession, row: Row[Any], code: str) -> Row[Any]:
    expected = row.confirmation_code_hash
    if (
        expected is None
        or row.confirmation_expires_at is None
        or row.confirmation_expires_at < datetime.now(UTC)
        or not hmac.compare_digest(expected, _code_hash(row.id, code.strip()))
    ):
        raise WrongConfirmationCode(
            "that is not the code of the latest test email (or it expired); send a new one",
        )
    await repository.update_account(
        session,
        row.company_id,
        row.id,
        confirmed_at=datetime.now(UTC),
        confirmation_code_hash=None,
        confirmation_expires_at=None,
    )
    return await get(session, row.company_id, row.id)
