"""HTTP API of company SMTP accounts (R15): every caller may list them, administrators change
them."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from leadline_kit.db import Session
from leadline_kit.errors import problem_response
from leadline_kit.identity import Admin, Caller
from leadline_send.accounts import service
from leadline_send.accounts.schemas import (
    ConfirmIn,
    ConnectionTest,
    SmtpAccountFields,
    SmtpAccountIn,
    SmtpAccountOut,
    TestEmailIn,
)
from leadline_send.context import Context
from leadline_send.problems import AccountInError

router = APIRouter(prefix="/v1/smtp-accounts", tags=["smtp accounts"])


@router.get("", response_model=list[SmtpAccountOut])
async def list_accounts(caller: Caller, session: Session) -> list[SmtpAccountOut]:
    return [service.to_out(r) for r in await service.list_accounts(session, caller.company_id)]


@router.post("", status_code=201, response_model=SmtpAccountOut)
async def create_account(
    body: SmtpAccountIn, caller: Admin, session: Session, context: Context
) -> SmtpAccountOut:
    return service.to_out(await service.create(session, context, caller.company_id, body))


@router.get("/{account_id}", response_model=SmtpAccountOut)
async def get_account(account_id: uuid.UUID, caller: Caller, session: Session) -> SmtpAccountOut:
    return service.to_out(await service.get(session, caller.company_id, account_id))


@router.patch("/{account_id}", response_model=SmtpAccountOut)
async def patch_account(
    account_id: uuid.UUID,
    body: SmtpAccountFields,
    caller: Admin,
    session: Session,
    context: Context,
) -> SmtpAccountOut:
    account = service.to_out(
        await service.patch(session, context, caller.company_id, account_id, body)
    )
    context.delivery.forget_accounts()
    return account


@router.delete("/{account_id}", status_code=204)
async def delete_account(
    account_id: uuid.UUID, caller: Admin, session: Session, context: Context
) -> Response:
    await service.remove(session, caller.company_id, account_id)
    context.delivery.forget_accounts()
    return Response(status_code=204)


@router.post("/{account_id}/test-connection", response_model=ConnectionTest)
async def test_connection(
    account_id: uuid.UUID, caller: Admin, session: Session, context: Context
) -> ConnectionTest:
    return await service.test_connection(
        context, await service.get(session, caller.company_id, account_id)
    )


@router.post(
    "/{account_id}/test-email",
    status_code=202,
    response_model=SmtpAccountOut,
    responses={
        422: {"description": "not sent: the SMTP answer, or the account's error and its fix"}
    },
)
async def test_email(
    account_id: uuid.UUID,
    body: TestEmailIn,
    caller: Admin,
    session: Session,
    context: Context,
    request: Request,
) -> SmtpAccountOut | JSONResponse:
    row = await service.get(session, caller.company_id, account_id)
    try:
        await service.send_test_email(session, context, row, body.to)
    except AccountInError as problem:
        # returned, not raised: the account's error state commits with the session
        context.delivery.forget_accounts()
        return problem_response(problem, request.url.path)
    return service.to_out(await service.get(session, caller.company_id, account_id))


@router.post("/{account_id}/confirm", response_model=SmtpAccountOut)
async def confirm(
    account_id: uuid.UUID, body: ConfirmIn, caller: Admin, session: Session, context: Context
) -> SmtpAccountOut:
    row = await service.get(session, caller.company_id, account_id)
    account = service.to_out(await service.confirm(session, row, body.code))
    context.delivery.forget_accounts()
    return account
