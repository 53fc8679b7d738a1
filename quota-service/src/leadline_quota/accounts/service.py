"""Sending accounts: the operator's overrides, the tenant's own lower limits, and usage of each
limit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from leadline_quota.accounts import repository
from leadline_quota.limits import (
    AccountLimits,
    invalid_limit_settings,
    month_period,
    raised_limits,
    resolve_limits,
)
from leadline_quota.reservations.repository import window_usage
from leadline_quota.reservations.service import InvalidAsk, canonical_account_key


@dataclass(frozen=True)
class LimitReport:
    limit: str
    maximum: int
    used: int | None = None
    remaining: int | None = None
    resets_at: datetime | None = None


@dataclass(frozen=True)
class AccountReport:
    account_key: str
    provider: str
    month_start_day: int
    operator_overrides: dict[str, int | None]
    tenant_overrides: dict[str, int]
    limits: list[LimitReport]


class LimitRaised(InvalidAsk):
    """A tenant asked for a limit above what its preset and the operator allow."""


def _limits_of(row: Any, tenant_overrides: dict[str, int] | None = None) -> AccountLimits:
    return resolve_limits(
        row.provider,
        row.account_settings,
        row.settings_month_start_day,
        row.operator_overrides,
        row.operator_month_start_day,
        row.tenant_overrides if tenant_overrides is None else tenant_overrides,
    )


async def _report(session: AsyncSession, row: Any, now: datetime) -> AccountReport:
    limits = _limits_of(row)
    reports = [LimitReport(name, maximum) for name, maximum in limits.static().items()]
    for usage in await window_usage(
        session, row.company_id, row.account_key, limits, now, with_resets=True
    ):
        resets_at = usage.resets_at
        if usage.limit.window == "month":
            resets_at = month_period(now, limits.month_start_day)[1]
        reports.append(
            LimitReport(
                usage.limit.name,
                usage.limit.maximum,
                usage.used,
                max(0, usage.limit.maximum - usage.used),
                resets_at,
            )
        )
    return AccountReport(
        row.account_key,
        row.provider,
        limits.month_start_day,
        dict(row.operator_overrides),
        dict(row.tenant_overrides),
        reports,
    )


async def account_reports(
    session: AsyncSession, company_id: uuid.UUID, now: datetime, *, after: str | None, limit: int
) -> list[AccountReport]:
    """The company's accounts ordered by key, starting after ``after``."""
    rows = await repository.accounts(session, company_id, after, limit)
    return [await _report(session, row, now) for row in rows]


async def _upsert(
    session: AsyncSession,
    company_id: uuid.UUID,
    account_key: str,
    values: dict[str, Any],
    now: datetime,
) -> AccountReport:
    return await _report(
        session, await repository.upsert(session, company_id, account_key, values), now
    )


async def set_operator_overrides(
    session: AsyncSession,
    company_id: uuid.UUID,
    account_key: str,
    overrides: dict[str, int | None],
    provider: str | None,
    month_start_day: int | None,
    now: datetime,
) -> AccountReport:
    """Replace the operator's overrides of one account (created if unknown so far); they may raise a
    limit."""
    account_key = canonical_account_key(account_key)
    problem = invalid_limit_settings(overrides, month_start_day)
    if problem:
        raise InvalidAsk(problem)
    values: dict[str, Any] = {
        "operator_overrides": overrides,
        "operator_month_start_day": month_start_day,
    }
    if provider is not None:
        values["provider"] = provider[:100]
    return await _upsert(session, company_id, account_key, values, now)


async def set_tenant_overrides(
    session: AsyncSession,
    company_id: uuid.UUID,
    account_key: str,
    overrides: dict[str, int],
    now: datetime,
) -> AccountReport:
    """Replace the tenant's own limits of one account: each at most what the preset and the operator
    allow.

    The limits are checked here against the account as last seen, and clamped again on every
    reservation (the sender's provider and settings decide there), so no order of changes raises
    one.
    """
    account_key = canonical_account_key(account_key)
    problem = invalid_limit_settings(dict(overrides), None)
    if problem:
        raise InvalidAsk(problem)
    row = await repository.account(session, company_id, account_key)
    ceiling = (
        _limits_of(row, {}) if row is not None else resolve_limits("custom", {}, None, {}, None, {})
    )
    raised = raised_limits(ceiling, overrides)
    if raised:
        allowed = ", ".join(f"{name} at most {maximum}" for name, maximum in sorted(raised.items()))
        raise LimitRaised(
            f"a company may only lower its limits ({allowed}); raising a limit above the "
            "provider's preset is an operator action"
        )
    return await _upsert(session, company_id, account_key, {"tenant_overrides": overrides}, now)
