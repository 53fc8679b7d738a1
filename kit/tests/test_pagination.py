"""Cursors are ours: anything a client makes up instead is a 400 problem, never a 500."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from leadline_kit.errors import BadRequest
from leadline_kit.pagination import decode_cursor, decode_position, encode_cursor, encode_position


def test_a_cursor_round_trips() -> None:
    moment, row_id = datetime(2026, 11, 23, 12, 0, tzinfo=UTC), uuid.uuid4()
    assert decode_position(encode_position(moment, row_id)) == (moment, row_id)


@pytest.mark.parametrize(
    "moment",
    [
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
        "2026-11-23T12:00:00",
        "not a time",
        "2026-13-01T00:00:00+00:00",
    ],
)
def test_a_moment_out_of_range_or_without_offset_is_refused(moment: str) -> None:
    with pytest.raises(BadRequest):
        decode_position(encode_cursor(moment, uuid.uuid4()))


def test_control_characters_in_a_cursor_are_refused() -> None:
    with pytest.raises(BadRequest):
        decode_cursor(encode_cursor("gmail\x00"), 1)
    assert decode_cursor(encode_cursor("gmail"), 1) == ["gmail"]
