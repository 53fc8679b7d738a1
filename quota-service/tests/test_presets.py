"""The presets file as reviewed data, and the month period arithmetic."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib import resources

import pytest

from leadline_quota.limits import LIMIT_NAMES, catalogue, month_period, resolve_limits

SOURCE = re.compile(r"\[00[0-4]\]")


def presets_text() -> str:
    return resources.files("leadline_quota").joinpath("presets.toml").read_text("utf-8")


def test_every_limit_value_names_the_seed_it_came_from() -> None:
    lines = presets_text().splitlines()
    section = ""
    for number, line in enumerate(lines):
        if line.startswith("["):
            section = line
        name = line.split("=")[0].strip()
        if name not in LIMIT_NAMES and name != "synced_emails_per_user_per_day":
            continue
        # the source is on the line, or in the comment block right above it
        above = []
        for previous in reversed(lines[:number]):
            if not previous.startswith("#"):
                break
            above.append(previous)
        cited = SOURCE.search(line) or any(SOURCE.search(comment) for comment in above)
        assert cited or section == "[custom]", f"{section} {name}: no seed cited"


def test_aliases_and_keys_are_unambiguous_and_unknown_means_custom() -> None:
    data = catalogue()
    names = [key for preset in data.providers.values() for key in (preset.key, *preset.aliases)]
    assert len(names) == len(set(names))
    assert data.preset("Hotmail").key == "outlook"
    assert data.preset("Office 365").key == "office365"
    assert data.preset("bellsouth").key == "att"
    assert data.preset("never-heard-of-it") is data.custom


def test_layers_override_field_by_field() -> None:
    limits = resolve_limits(
        "yahoo",
        {"messages_per_day": 50, "messages_per_month": 900},
        10,
        {"messages_per_day": None, "recipients_per_message": 20},
        None,
        {"messages_per_hour": 1000, "recipients_per_message": 10, "messages_per_day": 40},
    )
    assert (
        limits.values["messages_per_hour"] == 100
    )  # preset (the tenant's higher value does not raise it)
    assert limits.values["messages_per_month"] == 900  # account setting
    assert limits.values["messages_per_day"] == 40  # operator lifted it, the tenant set its own
    assert (
        limits.values["recipients_per_message"] == 10
    )  # the tenant's, lower than the operator's 20
    assert limits.month_start_day == 10
    assert [limit.name for limit in limits.windowed()] == [
        "messages_per_hour",
        "messages_per_day",
        "messages_per_month",
    ]


@pytest.mark.parametrize(
    "now,day,expected",
    [
        (
            datetime(2026, 2, 14, tzinfo=UTC),
            1,
            (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)),
        ),
        (
            datetime(2026, 2, 14, tzinfo=UTC),
            15,
            (datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 2, 15, tzinfo=UTC)),
        ),
        (
            datetime(2026, 3, 30, tzinfo=UTC),
            31,
            (datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC)),
        ),
        (
            datetime(2028, 2, 29, 5, tzinfo=UTC),
            30,
            (datetime(2028, 2, 29, tzinfo=UTC), datetime(2028, 3, 30, tzinfo=UTC)),
        ),
        (
            datetime(2026, 4, 30, tzinfo=UTC),
            31,
            (datetime(2026, 4, 30, tzinfo=UTC), datetime(2026, 5, 31, tzinfo=UTC)),
        ),
        (
            datetime(2027, 1, 3, tzinfo=UTC),
            29,
            (datetime(2026, 12, 29, tzinfo=UTC), datetime(2027, 1, 29, tzinfo=UTC)),
        ),
    ],
)
def test_month_period_clamps_start_days_29_to_31(
    now: datetime, day: int, expected: tuple[datetime, datetime]
) -> None:
    assert month_period(now, day) == expected
