"""Sending limits: their names, the windows they count over, and the provider presets.

A sending account's limits are resolved in layers, each overriding the one
below field by field: the provider preset (``presets.toml``; an unknown
provider gets ``custom``), then the account settings the sender passes with
each request (e.g. a company SMTP account's max per month), then the
operator's overrides (``PUT /v1/operator/quotas/{company_id}/accounts/{key}``,
which may raise or lift a limit).  Last the tenant's own limits
(``PUT /v1/quotas/accounts/{key}``) apply, and only where they are lower: a
tenant never raises a limit above what the layers below allow (R29).

Static limits (recipients per message / per connection, message size) are
checked against one message (of a batch, the largest); windowed limits count
the messages or recipients of granted reservations:
rolling windows over the last second, minute, 30 minutes, hour and day, and a
calendar window per month starting on the account's month start day (UTC; a
start day past the end of a short month falls on its last day).
"""

from __future__ import annotations

import calendar
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any, Literal

STATIC_LIMITS = ("recipients_per_message", "recipients_per_connection", "message_size_bytes")
ROLLING_WINDOWS: dict[str, timedelta] = {
    "second": timedelta(seconds=1),
    "minute": timedelta(minutes=1),
    "30_minutes": timedelta(minutes=30),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}
WINDOWS = (*ROLLING_WINDOWS, "month")
Measure = Literal["messages", "recipients"]
MEASURES: tuple[Measure, ...] = ("messages", "recipients")
WINDOWED_LIMITS = tuple(f"{measure}_per_{window}" for window in WINDOWS for measure in MEASURES)
LIMIT_NAMES = (*STATIC_LIMITS, *WINDOWED_LIMITS)
MAX_LIMIT = 2**31 - 1  # counts are PostgreSQL integers


@dataclass(frozen=True)
class WindowedLimit:
    name: str
    measure: Measure
    window: str
    maximum: int

    def demand(self, messages: int, recipients: int) -> int:
        """How much ``messages`` messages with ``recipients`` recipients in all use of this
        limit."""
        return messages if self.measure == "messages" else recipients


@dataclass(frozen=True)
class AccountLimits:
    """The resolved limits of one sending account; ``None`` = no limit."""

    values: dict[str, int | None]
    month_start_day: int

    def static(self) -> dict[str, int]:
        return {name: v for name in STATIC_LIMITS if (v := self.values.get(name)) is not None}

    def windowed(self) -> list[WindowedLimit]:
        limits = []
        for name in WINDOWED_LIMITS:
            maximum = self.values.get(name)
            if maximum is not None:
                measure, _, window = name.partition("_per_")
                limits.append(WindowedLimit(name, measure, window, maximum))  # type: ignore[arg-type]
        return limits


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    limits: dict[str, int]
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    key: str
    label: str
    synced_emails_per_user_per_day: int | None


@dataclass(frozen=True)
class Catalogue:
    custom: Preset
    providers: dict[str, Preset]
    plans: dict[str, Plan]

    def preset(self, provider: str) -> Preset:
        """The provider's preset by key or alias, case-insensitive; anything unknown →
        ``custom``."""
        wanted = provider.strip().lower().replace(" ", "_")
        for preset in self.providers.values():
            if wanted == preset.key or wanted in preset.aliases:
                return preset
        return self.custom


def _preset(key: str, table: dict[str, Any]) -> Preset:
    unknown = set(table) - {"label", "aliases", *LIMIT_NAMES}
    if unknown:
        raise ValueError(f"presets.toml [{key}]: unknown fields {sorted(unknown)}")
    limits = {name: int(table[name]) for name in LIMIT_NAMES if name in table}
    return Preset(key, str(table.get("label", key)), limits, tuple(table.get("aliases", ())))


def parse_catalogue(text: str) -> Catalogue:
    document = tomllib.loads(text)
    return Catalogue(
        custom=_preset("custom", document["custom"]),
        providers={key: _preset(key, table) for key, table in document["providers"].items()},
        plans={
            key: Plan(
                key, str(table.get("label", key)), table.get("synced_emails_per_user_per_day")
            )
            for key, table in document["plans"].items()
        },
    )


@cache
def catalogue() -> Catalogue:
    return parse_catalogue(
        resources.files("leadline_quota").joinpath("presets.toml").read_text("utf-8")
    )


DEFAULT_PLAN = "standard"


def resolve_limits(
    provider: str,
    account_settings: dict[str, int],
    settings_month_start_day: int | None,
    operator_overrides: dict[str, int | None],
    operator_month_start_day: int | None,
    tenant_overrides: dict[str, int],
) -> AccountLimits:
    values: dict[str, int | None] = dict(catalogue().preset(provider).limits)
    values.update(account_settings)
    values.update(operator_overrides)
    for name, lower in tenant_overrides.items():
        ceiling = values.get(name)
        values[name] = lower if ceiling is None else min(ceiling, lower)
    return AccountLimits(values, operator_month_start_day or settings_month_start_day or 1)


def raised_limits(ceiling: AccountLimits, tenant_overrides: dict[str, int]) -> dict[str, int]:
    """The tenant's limits that would pass ``ceiling`` (name → the most it allows)."""
    return {
        name: maximum
        for name, value in tenant_overrides.items()
        if (maximum := ceiling.values.get(name)) is not None and value > maximum
    }


def invalid_limit_settings(
    values: dict[str, int | None], month_start_day: int | None
) -> str | None:
    """Why the limit settings cannot be used, or ``None`` when they are fine."""
    unknown = sorted(set(values) - set(LIMIT_NAMES))
    if unknown:
        return f"unknown limit names {unknown}; known: {list(LIMIT_NAMES)}"
    out_of_range = sorted(
        name for name, v in values.items() if v is not None and not 0 <= v <= MAX_LIMIT
    )
    if out_of_range:
        return f"limits must be between 0 and {MAX_LIMIT}: {out_of_range}"
    if month_start_day is not None and not 1 <= month_start_day <= 31:
        return "month_start_day must be between 1 and 31"
    return None


# --- windows --------------------------------------------------------------------------


def _month_day(year: int, month: int, day: int) -> datetime:
    last = calendar.monthrange(year, month)[1]
    return datetime(year, month, min(day, last), tzinfo=UTC)


def _add_months(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def month_period(now: datetime, start_day: int) -> tuple[datetime, datetime]:
    """The monthly period holding ``now``: [start, next start), days 29–31 clamped in short
    months."""
    now = now.astimezone(UTC)
    start = _month_day(now.year, now.month, start_day)
    if start > now:
        start = _month_day(*_add_months(now.year, now.month, -1), start_day)
    following = _month_day(*_add_months(start.year, start.month, 1), start_day)
    return start, following


def window_bounds(
    window: str, now: datetime, month_start_day: int
) -> tuple[datetime, datetime | None]:
    """(start, end) of the window at ``now``: usage at or before ``start`` no longer counts.

    Rolling windows have no fixed end (``None``): each use frees ``length`` after it was granted.
    The month window counts uses in [start, end) and frees all of them at ``end``.
    """
    if window == "month":
        start, end = month_period(now, month_start_day)
        # the month window's lower bound is inclusive; one microsecond earlier makes it "after
        # start"
        return start - timedelta(microseconds=1), end
    return now - ROLLING_WINDOWS[window], None
