"""HTTP API of the quota service (served under the same public paths the gateway routes)."""

from __future__ import annotations

import math
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from leadline_kit.db import Session
from leadline_kit.errors import (
    Problem,
    QuotaExceeded,
    Unprocessable,
    problem_response,
)
from leadline_kit.identity import Admin, Caller, Operator
from leadline_kit.pagination import decode_cursor, encode_cursor
from leadline_quota.accounts import service as accounts
from leadline_quota.clock import Clock, QuotaContext
from leadline_quota.limits import LIMIT_NAMES, Preset, catalogue
from leadline_quota.mailbox_slots import service as mailbox_slots
from leadline_quota.plans import service as plans
from leadline_quota.problems import (
    QuotaLimitUnreachable,
    QuotaRaiseForbidden,
    ReservationCountsInvalid,
    ReservationNotFound,
    ReservationSettled,
)
from leadline_quota.reservations import service as reservations
from leadline_quota.reservations.service import InvalidAsk, ReserveAsk, Settlement
from leadline_quota.schemas import (
    AccountOverridesIn,
    AccountQuotaOut,
    CommitIn,
    LimitUsageOut,
    PlanIn,
    PlanOut,
    PresetOut,
    PresetsOut,
    QuotaReportOut,
    ReservationIn,
    ReservationOut,
    SettlementOut,
    TenantLimitsIn,
)

router = APIRouter(prefix="/v1/quotas", tags=["quotas"])
# raising limits and changing plans: the operator's, never a tenant's (R29)
operator_router = APIRouter(prefix="/v1/operator/quotas/{company_id}", tags=["operator"])


def _clock(request: Request) -> Clock:
    context: QuotaContext = request.app.state.runtime.context_of(QuotaContext)
    return context.clock


def _account_out(report: accounts.AccountReport) -> AccountQuotaOut:
    return AccountQuotaOut(
        account_key=report.account_key,
        provider=report.provider,
        month_start_day=report.month_start_day,
        operator_overrides=report.operator_overrides,
        tenant_overrides=report.tenant_overrides,
        limits=[
            LimitUsageOut(
                limit=r.limit,
                maximum=r.maximum,
                used=r.used,
                remaining=r.remaining,
                resets_at=r.resets_at,
            )
            for r in report.limits
        ],
    )


@router.get("", response_model=QuotaReportOut)
async def quota_report(
    caller: Caller,
    session: Session,
    request: Request,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> QuotaReportOut:
    """Per sending account of the caller's company, each limit with used, remaining and
    resets_at."""
    now = _clock(request)()
    after = decode_cursor(cursor, 1)[0] if cursor else None
    reports = await accounts.account_reports(
        session, caller.company_id, now, after=after, limit=limit + 1
    )
    more = len(reports) > limit
    reports = reports[:limit]
    plan = await plans.company_plan(session, caller.company_id)
    slots = await mailbox_slots.company_slots(session, caller.company_id)
    return QuotaReportOut(
        plan=plan.key,
        synced_emails_per_user_per_day=plan.synced_emails_per_user_per_day,
        synced_emails_today=await plans.synced_today(session, caller.company_id, now),
        mailbox_limit=slots.mailbox_limit,
        mailboxes_granted=slots.granted,
        mailboxes_pending=slots.pending,
        accounts=[_account_out(r) for r in reports],
        next_cursor=encode_cursor(reports[-1].account_key) if more else None,
    )


def _preset_out(preset: Preset) -> PresetOut:
    return PresetOut(
        provider=preset.key, label=preset.label, aliases=list(preset.aliases), limits=preset.limits
    )


@router.get("/presets", response_model=PresetsOut)
async def presets(caller: Caller) -> PresetsOut:
    """The provider presets' default sending limits and the plans."""
    data = catalogue()
    return PresetsOut(
        limit_names=list(LIMIT_NAMES),
        custom=_preset_out(data.custom),
        providers=[_preset_out(p) for p in data.providers.values()],
        plans=[
            PlanOut(
                plan=p.key,
                label=p.label,
                synced_emails_per_user_per_day=p.synced_emails_per_user_per_day,
            )
            for p in data.plans.values()
        ],
    )


@router.post(
    "/reservations",
    status_code=201,
    response_model=ReservationOut,
    responses={
        429: {"description": "refused: a limit would be passed; see retry_at / Retry-After"},
        422: {"description": "malformed, or a message that can never pass (retry_at null)"},
    },
)
async def reserve(
    body: ReservationIn,
    caller: Admin,
    session: Session,
    request: Request,
) -> ReservationOut | JSONResponse:
    """Reserve quota for one message or a batch (operators; senders use the NATS RPC)."""
    ask = ReserveAsk(
        caller.company_id,
        body.account_key,
        body.provider,
        body.recipients,
        body.size_bytes,
        body.ttl_seconds,
        body.overrides,
        body.month_start_day,
        messages=body.messages,
        largest_recipients=body.largest_recipients,
    )
    try:
        decision = await reservations.reserve(session, ask, _clock(request))
    except InvalidAsk as exc:
        raise Unprocessable(str(exc)) from exc
    if decision.granted:
        assert decision.reservation_id is not None and decision.expires_at is not None
        return ReservationOut(
            reservation_id=decision.reservation_id, expires_at=decision.expires_at
        )
    # returned, not raised: the refusal's quota.exceeded event must commit with the session
    problem: Problem
    if decision.retry_at is None:
        problem = QuotaLimitUnreachable(decision.detail, limit=decision.limit, retry_at=None)
    else:
        wait = max(1, math.ceil((decision.retry_at - _clock(request)()).total_seconds()))
        problem = QuotaExceeded(
            decision.detail,
            headers={"Retry-After": str(wait)},
            limit=decision.limit,
            retry_at=decision.retry_at,
        )
    return problem_response(problem, request.url.path)


def _settled(settlement: Settlement) -> SettlementOut:
    if settlement.invalid:
        raise ReservationCountsInvalid(settlement.detail)
    if not settlement.found:
        raise ReservationNotFound("no such reservation")
    if not settlement.ok:
        raise ReservationSettled(settlement.detail)
    return SettlementOut(ok=True, detail=settlement.detail)


@router.post(
    "/reservations/{reservation_id}/commit",
    response_model=SettlementOut,
    responses={422: {"description": "used counts out of range of the reservation"}},
)
async def commit(
    reservation_id: uuid.UUID,
    caller: Admin,
    session: Session,
    request: Request,
    body: CommitIn | None = None,
) -> SettlementOut:
    """Make the usage final; a body may name the part of a batch that was used (the rest is given
    back)."""
    used = body or CommitIn()
    return _settled(
        await reservations.commit(
            session,
            caller.company_id,
            reservation_id,
            _clock(request),
            messages=used.messages,
            recipients=used.recipients,
        )
    )


@router.post("/reservations/{reservation_id}/release", response_model=SettlementOut)
async def release(
    reservation_id: uuid.UUID, caller: Admin, session: Session, request: Request
) -> SettlementOut:
    return _settled(
        await reservations.release(session, caller.company_id, reservation_id, _clock(request))
    )


@router.put(
    "/accounts/{account_key}",
    response_model=AccountQuotaOut,
    responses={
        422: {"description": "unknown limit, or one above what the preset and the operator allow"}
    },
)
async def set_tenant_limits(
    account_key: str, body: TenantLimitsIn, caller: Admin, session: Session, request: Request
) -> AccountQuotaOut:
    """Replace the company's own limits of an account: each may only lower the preset (or the
    operator's)."""
    try:
        report = await accounts.set_tenant_overrides(
            session, caller.company_id, account_key, body.overrides, _clock(request)()
        )
    except accounts.LimitRaised as exc:
        raise QuotaRaiseForbidden(str(exc)) from exc
    except InvalidAsk as exc:
        raise Unprocessable(str(exc)) from exc
    return _account_out(report)


@operator_router.put("/accounts/{account_key}", response_model=AccountQuotaOut)
async def set_account_overrides(
    company_id: uuid.UUID,
    account_key: str,
    body: AccountOverridesIn,
    operator: Operator,
    session: Session,
    request: Request,
) -> AccountQuotaOut:
    """Replace an account's operator overrides (field by field over its preset and settings; null
    lifts one)."""
    try:
        report = await accounts.set_operator_overrides(
            session,
            company_id,
            account_key,
            body.overrides,
            body.provider,
            body.month_start_day,
            _clock(request)(),
        )
    except InvalidAsk as exc:
        raise Unprocessable(str(exc)) from exc
    return _account_out(report)


@operator_router.put("/plan", response_model=PlanOut)
async def set_plan(
    company_id: uuid.UUID, body: PlanIn, operator: Operator, session: Session, request: Request
) -> PlanOut:
    """Set a company's plan (e.g. ``legacy_free``: 100 synced emails per user per day)."""
    plan = await plans.set_plan(session, company_id, body.plan, _clock(request)())
    return PlanOut(
        plan=plan.key,
        label=plan.label,
        synced_emails_per_user_per_day=plan.synced_emails_per_user_per_day,
    )
