"""Blocklist API models."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from leadline_kit.pagination import Page
from leadline_kit.text import ONE_LINE

BlockKind = Literal["address", "domain"]


class BlocklistEntryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=254, pattern=ONE_LINE),
    ]
    kind: BlockKind | None = None
    (
        """Omitted: an address when the value holds an ``@`` (other than a leading one), else a """
        """domain."""
    )


class BlocklistEntry(BaseModel):
    id: uuid.UUID
    kind: BlockKind
    value: str
    created_by: uuid.UUID | None
    created_at: datetime


class BlocklistPage(Page[BlocklistEntry]):
    """The company's entries, plus its own domains, blocked by default unless the company turned it
    off (R6)."""

    own_domains: list[str]
    own_domains_blocked: bool
