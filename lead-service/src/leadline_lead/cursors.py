"""Cursors of the newest-first listings (leads, blocklist): the last row's (created_at, id)."""

from __future__ import annotations

import uuid
from datetime import datetime

from leadline_kit.errors import BadRequest
from leadline_kit.pagination import decode_cursor, encode_cursor


def created_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    return encode_cursor(created_at.isoformat(), row_id)


def after_created(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """The position a cursor names; a malformed one is a 400 problem."""
    if not cursor:
        return None
    created_at, row_id = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(created_at), uuid.UUID(row_id)
    except ValueError as exc:
        raise BadRequest("cursor is not valid", slug="invalid-cursor") from exc
