"""Opaque cursors for listing endpoints: base64url JSON of the last row's sort key."""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from leadline_kit.errors import InvalidCursor

T = TypeVar("T")

# a cursor is ours: a control character in one (NUL above all, which PostgreSQL refuses) was never
# made here
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps([str(k) for k in key]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, parts: int) -> list[str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if (
            not isinstance(key, list)
            or len(key) != parts
            or not all(isinstance(k, str) and not _CONTROL.search(k) for k in key)
        ):
            raise ValueError
    except ValueError as exc:
        raise InvalidCursor("cursor is not valid") from exc
    return key


def encode_position(moment: datetime, row_id: uuid.UUID) -> str:
    """The cursor of a listing ordered by (a timestamp, id): the last row's pair."""
    return encode_cursor(moment.isoformat(), row_id)


def decode_position(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """The (timestamp, id) a cursor of :func:`encode_position` names; None for no cursor; a
    malformed one (also a moment without a UTC offset, or one whose UTC time leaves the calendar) is
    a 400 problem."""
    if not cursor:
        return None
    moment, row_id = decode_cursor(cursor, 2)
    try:
        parsed = datetime.fromisoformat(moment)
        if parsed.tzinfo is None:
            raise ValueError("no UTC offset")
        return parsed.astimezone(UTC), uuid.UUID(row_id)
    except (ValueError, OverflowError) as exc:
        raise InvalidCursor("cursor is not valid") from exc
