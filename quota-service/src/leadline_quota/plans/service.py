"""Company plans and their limits on synced email (R14: the legacy free plan, 100 per user per day).

The sync service asks for an allowance before storing newly synced emails; the
answer is how many of them the plan allows now, and they are counted as used.
Days are UTC calendar days.  A plan without a limit allows everything and
counts nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from leadline_quota.limits import DEFAULT_PLAN, Plan, catalogue
from leadline_quota.plans import repository
from leadline_quota.problems import UnknownPlan


def plan_named(name: str) -> Plan:
    plans = catalogue().plans
    if name not in plans:
        raise UnknownPlan(f"unknown plan {name!r}; plans: {sorted(plans)}")
    return plans[name]


async def company_plan(session: AsyncSession, company_id: uuid.UUID) -> Plan:
    name = await repository.plan_name(session, company_id)
    plans = catalogue().plans
    # a plan removed from the presets file falls back to the default rather than failing
    return plans.get(name or DEFAULT_PLAN, plans[DEFAULT_PLAN])


async def set_plan(session: AsyncSession, company_id: uuid.UUID, name: str, now: datetime) -> Plan:
    plan = plan_named(name)
    await repository.set_plan_name(session, company_id, plan.key, now)
    return plan


@dataclass(frozen=True)
class Allowance:
    allowed: int
    resets_at: datetime | None
    used: int | None = None


def next_utc_midnight(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), tzinfo=UTC)


async def sync_allowance(
    session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID, count: int, now: datetime
) -> Allowance:
    """How many of ``count`` synced emails the plan allows the user today; those are counted."""
    limit = (await company_plan(session, company_id)).synced_emails_per_user_per_day
    if limit is None:
        return Allowance(count, None)
    day = now.astimezone(UTC).date()
    used = await repository.lock_usage(session, company_id, user_id, day)
    allowed = max(0, min(count, limit - used))
    if allowed:
        await repository.set_usage(session, company_id, user_id, day, used + allowed)
    return Allowance(allowed, next_utc_midnight(now), used + allowed)


async def synced_today(
    session: AsyncSession, company_id: uuid.UUID, now: datetime
) -> dict[uuid.UUID, int]:
    return await repository.usage_on(session, company_id, now.astimezone(UTC).date())


async def prune_usage(session: AsyncSession, now: datetime) -> None:
    """Forget synced-email counts of days that are over."""
    await repository.prune_usage(session, now.astimezone(UTC).date() - timedelta(days=1))
